"""The new-video sensor: the Dagster edge of the source scan in `longvila.sources`.

Every tick (every ``LONGVILA_SENSOR_INTERVAL_S`` = 10 s) the sensor scans the source against the state in its
cursor (fingerprint and generation of each present video; see `longvila.sources` for listing, identity and
removal rules).
The scan never reads file contents, so a tick costs one listing whatever the file sizes. For each change:

* a new video: its partition is added and one run materialises its whole per-video chain (curation and
  captions, checks included) in one process;
* a changed video (new fingerprint, or back after removal): one run of ``raw_video``, which hashes the
  bytes; automation (`assets.policies.ON_NEW_DATA`) carries the chain only if the hash changed, so a
  touched file re-captions nothing;
* a removed video: marked removed in the manifest and logged; its partition and history stay, so no
  run or backfill of another video is affected.

Whenever the manifest changes, the tick also reports a materialisation of the external asset
``video_source`` whose metadata lists the removed videos (when and why) and the rejected files: what
the UI shows about videos that are gone.

Run keys (`longvila.sources.run_key`) hold the key, a digest of the fingerprint and the change's
generation: every detected change runs once, and content that goes A -> B -> A runs three times.
The manifest is rewritten only when it changed; the cursor commits the new state with the run requests.

Scale: a tick takes at most `max_new_per_tick` new or changed videos (the rest are deferred to the next
ticks, so a tick stays well inside the daemon's 60 s timeout however many videos arrive at once: the
daemon checks each requested partition one query at a time); partition adds go in requests of
`orchestration.bulk.PARTITION_ADD_CHUNK` keys (below SQLite's variable limit); the cursor is a digest of
the scan state kept in the lake (`longvila.sources.encode_cursor`), not the state itself.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Optional, Sequence

from dagster import (
    AssetKey,
    AssetMaterialization,
    DefaultSensorStatus,
    MetadataValue,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.common import md_table
from assets.curation import RAW_VIDEO, VIDEO_SOURCE
from assets.partitions import videos
from assets.resources import LakeResource
from longvila import sources
from longvila.errors import InputError
from orchestration.bulk import PARTITION_ADD_CHUNK, add_partitions, chunks

from .instance import AUTOMATED_RUN_TAGS

SENSOR_INTERVAL_S = int(os.environ.get("LONGVILA_SENSOR_INTERVAL_S") or 10)
MAX_NEW_PER_TICK = 25


def max_new_per_tick() -> int:
    """New or changed videos taken per tick (``LONGVILA_SENSOR_MAX_NEW``, default 25); the rest wait."""
    value = int(os.environ.get("LONGVILA_SENSOR_MAX_NEW") or MAX_NEW_PER_TICK)
    if value < 1:
        raise ValueError(f"LONGVILA_SENSOR_MAX_NEW must be >= 1, got {value}")
    return value


def _manifest_changed(new: dict, old: dict) -> bool:
    return (new["videos"], new["rejected"]) != (old.get("videos"), old.get("rejected"))


def _log_scan(context: SensorEvaluationContext, res: sources.ScanResult, old: dict) -> None:
    for rel, why in res.rejected.items():
        if rel not in old.get("rejected", {}):
            context.log.warning(f"rejected {rel!r}: {why}")
    for k in res.removed:
        context.log.warning(f"video removed from the source: {res.manifest['videos'][k]['relpath']!r} "
                            f"(partition {k}); marked removed in the manifest, its partition and history stay")
    context.log.info(f"scan of {res.manifest['source']}: {res.summary()}")


def source_report(res: sources.ScanResult, manifest_url: str) -> AssetMaterialization:
    """The `video_source` materialisation for a scan: counts, removed videos, rejected files."""
    removed = sources.removed_videos(res.manifest)
    rejected = [{"file": rel, "reason": why} for rel, why in res.manifest["rejected"].items()]
    return AssetMaterialization(asset_key=VIDEO_SOURCE, metadata={
        "source": res.manifest["source"],
        "manifest": MetadataValue.path(manifest_url),
        "present": len(sources.present_keys(res.manifest)),
        "removed": len(removed),
        "rejected": len(rejected),
        "this_scan": res.summary(),
        "removed_videos": MetadataValue.md(md_table(removed, limit=50, width=120)),
        "rejected_files": MetadataValue.md(md_table(rejected, limit=50, width=120)),
    })


def _scan(context: SensorEvaluationContext,
          lake: LakeResource) -> tuple[sources.ScanResult, list[AssetMaterialization]] | SkipReason:
    """The scan of one tick (bounded), logged; if the manifest changed it is written and reported as a
    `video_source` materialisation (returned with the scan)."""
    settings = lake.settings()
    lake_manifest = sources.read_manifest(settings)
    previous = sources.previous_state(context.cursor, lake_manifest, settings)
    try:
        res = sources.scan_source(settings, previous, log=context.log.error, max_changes=max_new_per_tick())
    except InputError as e:
        return SkipReason(str(e))
    _log_scan(context, res, lake_manifest)
    events = []
    if _manifest_changed(res.manifest, lake_manifest):
        events.append(source_report(res, sources.write_manifest(settings, res.manifest)))
    return res, events


def evaluate_new_videos(context: SensorEvaluationContext, lake: LakeResource,
                        chain: Sequence[AssetKey]) -> SensorResult | SkipReason:
    """One tick: scan, write the manifest if it changed, request runs for new and changed videos."""
    scanned = _scan(context, lake)
    if isinstance(scanned, SkipReason):
        return scanned
    res, events = scanned
    entries = res.manifest["videos"]
    run_requests = [
        RunRequest(run_key=sources.run_key(k, entries[k]), partition_key=k, tags=AUTOMATED_RUN_TAGS,
                   asset_selection=list(chain) if k in res.new else [RAW_VIDEO])
        for k in res.to_run
    ]
    adds = [videos.build_add_request(part) for part in chunks(res.to_run, PARTITION_ADD_CHUNK)]
    return SensorResult(run_requests=run_requests, dynamic_partitions_requests=adds, asset_events=events,
                        cursor=sources.encode_cursor(res.manifest, lake.settings()))


def evaluate_new_shards(context: SensorEvaluationContext, lake: LakeResource) -> SensorResult | SkipReason:
    """Shard mode: one tick appends new videos to shards and requests ``curated_shard`` for every shard
    with a new or changed video (the shard skips its unchanged videos by content hash)."""
    from assets.shards import CURATED_SHARD, shard_size, video_shards
    from longvila import shards

    scanned = _scan(context, lake)
    if isinstance(scanned, SkipReason):
        return scanned
    res, events = scanned
    settings = lake.settings()
    added = shards.assign(lake.storage_root, res.new, shard_size(), settings)
    index = shards.read_index(lake.storage_root, settings)
    touched: dict[str, list[str]] = {}
    for key, shard in shards.shard_of(index, res.to_run).items():
        touched.setdefault(shard, []).append(key)
    entries = res.manifest["videos"]
    run_requests = [
        RunRequest(run_key=f"{shard}:" + hashlib.sha1("".join(sources.run_key(k, entries[k]) for k in sorted(keys))
                                                      .encode()).hexdigest()[:16],
                   partition_key=shard, asset_selection=[CURATED_SHARD], tags=AUTOMATED_RUN_TAGS)
        for shard, keys in sorted(touched.items())
    ]
    adds = [video_shards.build_add_request(sorted(added))] if added else []
    return SensorResult(run_requests=run_requests, dynamic_partitions_requests=adds, asset_events=events,
                        cursor=sources.encode_cursor(res.manifest, settings))


def build_new_shard_sensor() -> SensorDefinition:
    """Shard mode's new-video sensor (same name and interval as the per-video one)."""
    from assets.shards import CURATED_SHARD

    @sensor(name="new_video_sensor", target=[CURATED_SHARD], minimum_interval_seconds=SENSOR_INTERVAL_S,
            default_status=DefaultSensorStatus.RUNNING,
            description="Shard mode: appends new videos to shards and runs curated_shard for each shard with a new "
            "or changed video (see orchestration/sensors.py, assets/shards.py).")
    def new_video_sensor(context: SensorEvaluationContext, lake: LakeResource):
        return evaluate_new_shards(context, lake)

    return new_video_sensor


def build_new_video_sensor(chain: Sequence[AssetKey]) -> SensorDefinition:
    """The sensor for a code location whose per-video chain (raw_video first) is `chain`."""

    @sensor(
        name="new_video_sensor",
        target=list(chain),
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description="Registers new/changed/removed videos of the source as `videos` partitions; runs the whole "
        "per-video chain for a new video, raw_video for a changed one (see orchestration/sensors.py).",
    )
    def new_video_sensor(context: SensorEvaluationContext, lake: LakeResource):
        return evaluate_new_videos(context, lake, chain)

    return new_video_sensor


def register_videos(instance, lake: LakeResource, log: Optional[Callable[[str], None]] = None) -> sources.ScanResult:
    """Scan the source against the lake manifest, write the manifest and add the new partitions to
    `instance`, without launching runs (`longvila demo`, tests)."""
    settings = lake.settings()
    res = sources.scan_source(settings, sources.read_manifest(settings), log=log)
    sources.write_manifest(settings, res.manifest)
    existing = set(instance.get_dynamic_partitions(videos.name))
    to_add = [k for k in sources.present_keys(res.manifest) if k not in existing]
    add_partitions(instance, videos.name, to_add)
    return res
