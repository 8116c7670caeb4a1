"""Shared, Dagster-free foundations of the LongVILA stack: settings, storage layout, atomic I/O, keys.

The libraries (`curation`, `training`, `evaluation`) and the Dagster edge (`assets`, `orchestration`)
all build on this package; it must never import dagster.
"""

__version__ = "0.1.0"
