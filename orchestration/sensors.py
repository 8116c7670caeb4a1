"""The new-video sensor: the Dagster edge of the source scan in `longvila.sources`.

Every tick (default every 30 s) the sensor scans the source against the state in its cursor (fingerprint
and generation of each present video; see `longvila.sources` for listing, identity and removal rules).
The scan never reads file contents, so a tick costs one listing whatever the file sizes. For each change:

* a new video: its partition is added and one run materialises its whole per-video chain (curation and
  captions, checks included) in one process;
* a changed video (new fingerprint, or back after removal): one run of ``raw_video``, which hashes the
  bytes; automation (`assets.policies.ON_NEW_DATA`) carries the chain only if the hash changed, so a
  touched file re-captions nothing;
* a removed video: marked removed in the manifest and logged; its partition and history stay, so no
  run or backfill of another video is affected.

Run keys (`longvila.sources.run_key`) hold the key, a digest of the fingerprint and the change's
generation: every detected change runs once, and content that goes A -> B -> A runs three times.
The manifest is rewritten only when it changed; the cursor commits the new state with the run requests.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.curation import RAW_VIDEO
from assets.partitions import videos
from assets.resources import LakeResource
from longvila import sources
from longvila.errors import InputError

SENSOR_INTERVAL_S = 30


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


def evaluate_new_videos(context: SensorEvaluationContext, lake: LakeResource,
                        chain: Sequence[AssetKey]) -> SensorResult | SkipReason:
    """One tick: scan, write the manifest if it changed, request runs for new and changed videos."""
    settings = lake.settings()
    lake_manifest = sources.read_manifest(settings)
    previous = sources.previous_state(context.cursor, lake_manifest)
    try:
        res = sources.scan_source(settings, previous, log=context.log.error)
    except InputError as e:
        return SkipReason(str(e))
    _log_scan(context, res, lake_manifest)
    if _manifest_changed(res.manifest, lake_manifest):
        sources.write_manifest(settings, res.manifest)
    entries = res.manifest["videos"]
    run_requests = [
        RunRequest(run_key=sources.run_key(k, entries[k]), partition_key=k,
                   asset_selection=list(chain) if k in res.new else [RAW_VIDEO])
        for k in res.to_run
    ]
    adds = [videos.build_add_request(res.to_run)] if res.to_run else []
    return SensorResult(run_requests=run_requests, dynamic_partitions_requests=adds,
                        cursor=sources.encode_cursor(res.manifest))


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
    if to_add:
        instance.add_dynamic_partitions(videos.name, to_add)
    return res
