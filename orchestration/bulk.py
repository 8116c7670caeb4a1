"""Instance operations sized for large corpora (no per-key round trips, no unbounded SQL statements).

* `add_partitions`: Dagster's ``add_dynamic_partitions`` checks the existing keys with one
  ``IN (...)`` query; with stock SQLite limits (32,766 host parameters) one request of ~33k keys fails
  with "too many SQL variables". Keys are added in chunks of `PARTITION_ADD_CHUNK`, which also bounds
  one transaction on PostgreSQL.
"""

from __future__ import annotations

from typing import Iterable

PARTITION_ADD_CHUNK = 10_000


def chunks(items: list, size: int) -> Iterable[list]:
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    for i in range(0, len(items), size):
        yield items[i:i + size]


def add_partitions(instance, partitions_def_name: str, keys: Iterable[str], chunk: int = PARTITION_ADD_CHUNK) -> int:
    """Add `keys` (existing ones are skipped by Dagster) in requests of at most `chunk` keys; returns the
    number of requests made."""
    requests = 0
    for part in chunks(list(dict.fromkeys(keys)), chunk):
        instance.add_dynamic_partitions(partitions_def_name, part)
        requests += 1
    return requests


__all__ = ["add_partitions", "chunks", "PARTITION_ADD_CHUNK"]
