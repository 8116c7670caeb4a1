"""LongVILA model, multi-modal sequence parallelism and the stage trainer (no Dagster; runs under torchrun)."""
