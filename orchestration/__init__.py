"""Dagster edge of the project: Definitions, resources, partitions, sensors, automation, CLI."""
