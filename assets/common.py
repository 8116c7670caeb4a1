"""What every asset module shares: instance look-ups, markdown previews, versioned layer writes, failures.

* `per_video_asset` / `per_video_check` / `per_video_check_spec`: the decorators of every per-video asset
  and check (partitioned by `videos`, the transient-fault retry policy and the shared automation
  condition of `assets.policies`), and the spec of a check that the asset's own step evaluates (no
  step, process work or event writes of its own: the cheaper choice for checks of what the step holds).
* `layer_result`: the `MaterializeResult` of an asset that wrote one layer file (data version, path,
  metadata, the results of its own checks).
* `latest_record` / `latest_metadata` / `data_version`: the newest materialisation of an asset (partition),
  its metadata as plain values and its ``dagster/data_version`` tag.
* `md_table`: a small markdown table for metadata previews (cells cut to a width, ``|`` escaped).
* `write_versioned`, `write_table`, `write_json`: atomic writes through `longvila.io` that return the
  sha256 of the bytes written, the data version of the asset that wrote them.
* `dataset_video_keys`: the video partitions an all-videos dataset takes (removed videos left out).
* `per_video_code_versions` / `lineage_metadata`: what an all-videos dataset records about the per-video
  lineage it consumed (code versions of its per-video ancestors; its ``lineage.parquet`` and sha256), so
  that `orchestration.lineage` answers without a per-video walk of the event log.
* `failure` and `input_failure`: a library `InputError` becomes a `dagster.Failure` that names the file,
  the layer and the reason and is never retried (bad input stays bad); other exceptions propagate and
  are retried by the assets' retry policy (`assets.policies`).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator, Optional, Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from assets.partitions import videos
from assets.policies import ON_NEW_DATA, TRANSIENT_RETRY
from longvila import io as lio
from longvila import sources
from longvila.errors import InputError


def per_video_asset(*, automated: bool = True, **kwargs):
    """`@asset` partitioned by `videos`, retried on transient faults and, unless `automated` is False,
    materialised by the shared automation condition (`assets.policies.ON_NEW_DATA`)."""
    return asset(partitions_def=videos, retry_policy=TRANSIENT_RETRY,
                 automation_condition=ON_NEW_DATA if automated else None, **kwargs)


def per_video_check(**kwargs):
    """`@asset_check` evaluated per video partition."""
    return asset_check(partitions_def=videos, **kwargs)


def per_video_check_spec(name: str, asset: AssetKey, description: str, blocking: bool = False) -> AssetCheckSpec:
    """A per-video check evaluated by its asset's step (returned in `layer_result(checks=...)`)."""
    return AssetCheckSpec(name, asset=asset, description=description, blocking=blocking, partitions_def=videos)


def layer_result(url: str, version: str, checks: Sequence[AssetCheckResult] = (), **metadata) -> MaterializeResult:
    """Result of an asset that wrote `url`: data version = content hash of the bytes, path first in the metadata,
    and the results of the checks its step evaluated."""
    return MaterializeResult(data_version=DataVersion(version), metadata={"path": MetadataValue.path(url), **metadata},
                             check_results=list(checks))


def latest_record(instance, key: AssetKey, partition: Optional[str] = None):
    """The newest materialisation record of `key` (in `partition`), or None."""
    recs = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition is not None else None), limit=1
    ).records
    return recs[0] if recs and recs[0].asset_materialization else None


def metadata_values(record) -> dict:
    """A materialisation record's metadata with the values unwrapped ({} for None)."""
    if record is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in (record.asset_materialization.metadata or {}).items()}


def latest_metadata(instance, key: AssetKey, partition: Optional[str] = None) -> dict:
    return metadata_values(latest_record(instance, key, partition))


def data_version(record) -> Optional[str]:
    return None if record is None else (record.asset_materialization.tags or {}).get("dagster/data_version")


def versions_as_of(instance, key: AssetKey, before: Optional[int] = None, page: int = 5000) -> dict[str, Optional[str]]:
    """{partition: data version} of the newest materialisation of each partition of `key` before the event
    `before` (a storage id; None: now), paged newest first: about partitions / `page` queries."""
    latest: dict[str, Optional[str]] = {}
    cursor = None
    while True:
        res = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, before_storage_id=before),
                                              limit=page, cursor=cursor)
        for r in res.records:
            latest.setdefault(r.asset_materialization.partition, data_version(r))
        if not res.has_more:
            return latest
        cursor = res.cursor


def md_table(rows: list[dict], limit: int = 8, width: int = 80) -> str:
    """Markdown table of the first `limit` rows (columns of the first row); floats with 3 decimals."""
    if not rows:
        return "(none)"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:limit]:
        out.append("| " + " | ".join(_cell(r.get(c, ""), width) for c in cols) + " |")
    if len(rows) > limit:
        out.append(f"| ... {len(rows) - limit} more |" + " |" * (len(cols) - 1))
    return "\n".join(out)


def _cell(v: Any, width: int) -> str:
    s = f"{v:.3f}" if isinstance(v, float) else str(v)
    return s.replace("|", "/").replace("\n", " ")[:width]


def write_versioned(url: str, data: bytes, settings) -> str:
    """Write `data` atomically to `url`; return its sha256 (the writer's data version)."""
    lio.write_bytes(url, data, settings)
    return lio.sha256_bytes(data)


def write_table(url: str, table, settings) -> tuple[str, int]:
    """Write a pyarrow table as Parquet atomically; return (sha256, size) of the bytes written."""
    data = lio.parquet_bytes(table)
    return write_versioned(url, data, settings), len(data)


def write_json(url: str, obj, settings) -> str:
    data = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
    return write_versioned(url, data, settings)


def dataset_video_keys(instance, lake) -> list[str]:
    """Registered video partitions that are present in the source. Without any manifest entry (videos
    registered by hand, not by a scan) every registered partition counts. In shard mode: the curated
    videos of the shard manifests (`assets.shards.shard_video_keys`)."""
    from assets.shards import shard_mode, shard_video_keys

    if shard_mode():
        return shard_video_keys(lake)
    registered = sorted(instance.get_dynamic_partitions(videos.name))
    manifest = lake.read_manifest()
    if not manifest.get("videos"):
        return registered
    present = set(sources.present_keys(manifest))
    return [k for k in registered if k in present]


def per_video_code_versions(context) -> dict[str, Optional[str]]:
    """Code version of every partitioned (per-video or per-shard) ancestor of the running asset, from the asset
    graph of its job (a run launched from a code location holds every asset; `materialize([...])` only
    the assets it was given)."""
    graph = context.job_def.asset_layer.asset_graph
    ancestors = graph.get_ancestor_asset_keys(context.asset_key)
    return {k.to_user_string(): graph.get(k).code_version for k in sorted(ancestors)
            if graph.get(k).partitions_def is not None}


def lineage_metadata(out_dir: str, manifest: dict) -> dict:
    """Materialisation metadata naming a dataset's lineage table (see longvila.lineage_table)."""
    lin = manifest.get("lineage")
    if not lin:
        return {}
    return {"lineage_table": MetadataValue.path(lio.join(out_dir, lin["table"])), "lineage_sha256": lin["sha256"],
            "lineage_videos": lin["videos"]}


def failure(context, layer: str, reason: str, *, file: Optional[str] = None, retryable: bool = False,
            **meta) -> Failure:
    """A Failure of `layer` for the run's partition, naming the file (when known) and the reason."""
    key = context.partition_key if context.has_partition_key else None
    subject = repr(file) if file else (f"partition {key}" if key else "this run")
    metadata = {"layer": layer, "reason": reason, **({"file": str(file)} if file else {}),
                **({"partition": key} if key else {}), **{k: str(v) for k, v in meta.items()}}
    return Failure(description=f"{layer} failed for {subject}: {reason}", metadata=metadata,
                   allow_retries=retryable)


@contextlib.contextmanager
def input_failure(context, layer: str, file: Optional[str] = None, **meta) -> Iterator[None]:
    """Turn a library InputError raised in the block into a non-retryable `failure` naming `file`
    (default: the error's own source)."""
    try:
        yield
    except InputError as e:
        raise failure(context, layer, e.reason, file=file or e.source, **meta) from None


def progress(context, every_s: float = 10.0):
    """A throttled `(done, total, msg)` callback that logs to the run."""
    from longvila.progress import Throttled

    return Throttled(lambda done, total, msg: context.log.info(f"{done}/{total or '?'} {msg}"), every_s)
