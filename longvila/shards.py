"""Shard assignment for large corpora (no Dagster): a shard is a sealed, append-only list of N videos.

Past ~10k videos one Dagster partition per video costs too much (partition checks, automation over every
partition, the UI). In shard mode (``LONGVILA_PARTITION_MODE=shards``) a partition is a *shard*:

* new videos are appended, in arrival order, to the one open shard; when it holds ``shard_size`` videos it is
  sealed and the next one opens. A video never moves: its shard is recorded in the index, so a changed video
  re-runs its own shard, where content-hash skipping (curation.scaleout) re-does only its own work;
* the index (``<storage>/shards/index.json``) holds the shard list (id, count, sealed) and the members of
  each shard; at 1M videos and N = 10,000 that is 100 partitions;
* writes are atomic; `assign` is idempotent (a key already assigned keeps its shard).
"""

from __future__ import annotations

from typing import Iterable, Optional

from . import io as lio

INDEX_RELPATH = "shards/index.json"
DEFAULT_SHARD_SIZE = 1000


def shard_id(n: int) -> str:
    return f"s{n:06d}"


def index_url(storage: str) -> str:
    return lio.join(storage, INDEX_RELPATH)


def read_index(storage: str, settings=None, shard_size: Optional[int] = None) -> dict:
    url = index_url(storage)
    if lio.exists(url, settings):
        return lio.read_json(url, settings)
    return {"version": 1, "shard_size": shard_size or DEFAULT_SHARD_SIZE, "shards": [], "members": {}}


def assign(storage: str, keys: Iterable[str], shard_size: int, settings=None) -> dict[str, list[str]]:
    """Append the keys not yet in a shard to the open shard(s); write the index. Returns {shard: keys added}."""
    index = read_index(storage, settings, shard_size)
    if index["shard_size"] != shard_size:
        raise ValueError(f"{index_url(storage)}: shards were made with {index['shard_size']} videos each, "
                         f"not {shard_size} (LONGVILA_SHARD_SIZE must not change for an existing lake)")
    assigned = {k for members in index["members"].values() for k in members}
    added: dict[str, list[str]] = {}
    for key in keys:
        if key in assigned:
            continue
        if not index["shards"] or index["shards"][-1]["sealed"]:
            index["shards"].append({"id": shard_id(len(index["shards"]) + 1), "count": 0, "sealed": False})
            index["members"][index["shards"][-1]["id"]] = []
        open_shard = index["shards"][-1]
        index["members"][open_shard["id"]].append(key)
        open_shard["count"] += 1
        open_shard["sealed"] = open_shard["count"] >= shard_size
        added.setdefault(open_shard["id"], []).append(key)
        assigned.add(key)
    if added:
        lio.write_json(index_url(storage), index, settings)
    return added


def shard_of(index: dict, keys: Iterable[str]) -> dict[str, str]:
    """{key: shard} for the given keys that are assigned."""
    wanted = set(keys)
    return {k: s for s, members in index["members"].items() for k in members if k in wanted}


__all__ = ["DEFAULT_SHARD_SIZE", "assign", "index_url", "read_index", "shard_id", "shard_of"]
