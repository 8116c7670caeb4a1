"""The new-video sensor and the scan it shares with `longvila demo`.

Every tick (default every 30 s) the sensor lists the source (`LakeResource.source`, a local folder or
``s3://bucket/prefix``, recursively, through fsspec) and keeps files whose extension is in
`VIDEO_EXTENSIONS`. Hidden files and folders (a path part starting with ``.``, e.g. partial uploads
``.x.tmp``) are skipped. Each video's partition key is `longvila.keys.partition_key_for(relative
path)`.

Change detection: the previous fingerprint of each video (size + mtime for local files, size + ETag
for S3) is kept in the sensor cursor. A video whose fingerprint changed (or that is new) is hashed
(sha256 of its bytes); only a new video or a different hash counts as a change (a `touch` does not).
For each new or changed video the sensor
  * adds the partition (`videos.build_add_request`) when it is new, and
  * requests one run of `raw_video` for that partition (run key ``<key>:<sha256[:16]>``).
`raw_video` records the hash as its data version; the downstream curation assets are eager
(`AutomationCondition.eager()`), so the automation sensor carries the video through the lineage.

Hashing is bounded per tick (`HASH_BUDGET_S`); videos not reached are picked up by the next tick.

Deleted videos: a video that disappears from the source is logged as a warning, marked
``"status": "deleted"`` (with ``deleted_at``) in the manifest, and its dynamic partition is
deleted, so it no longer counts as present anywhere (its materialisation history and lake files
stay, for provenance). If it reappears under the same relative path it gets the same key back and is
treated as new. A listing that finds no video at all while the manifest has some is treated as an
outage, not a mass deletion: nothing is deleted and the tick logs an error.

Rejected paths: a symlink (or any path) whose real location is outside the source root, and
relative paths with ``..`` parts, are never registered; they are logged and listed under
``"rejected"`` in the manifest with the reason.

The manifest, ``<storage>/manifest/videos.json`` (atomic write), maps each key to its relative
path, URL, size, fingerprint, sha256 and status; assets resolve a partition key to its source URL
with `LakeResource.video_url(key)`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from dagster import (
    AssetKey,
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from longvila import io as lio
from longvila.errors import InputError
from longvila.keys import partition_key_for

from .partitions import videos
from .resources import LakeResource

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
     ".wmv", ".3gp", ".ogv"}
)
HASH_BUDGET_S = 30.0
SENSOR_INTERVAL_S = 30
RAW_VIDEO = AssetKey("raw_video")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class SourceFile:
    relpath: str
    url: str
    size: int
    fingerprint: str  # "size:mtime" (local) or "size:etag" (s3)


@dataclass
class ScanResult:
    """Outcome of one scan of the source against the previous state."""

    new: list[str] = field(default_factory=list)  # keys of videos never seen (or back after deletion)
    changed: list[str] = field(default_factory=list)  # keys whose content hash changed
    unchanged: list[str] = field(default_factory=list)  # present, same content (maybe touched)
    deleted: list[str] = field(default_factory=list)  # keys that disappeared from the source now
    deferred: list[str] = field(default_factory=list)  # relpaths not hashed this time (budget)
    rejected: dict = field(default_factory=dict)  # relpath -> reason
    ignored: int = 0  # files without a video extension
    manifest: dict = field(default_factory=dict)
    outage: bool = False  # the listing was empty while videos were known: nothing deleted

    @property
    def to_run(self) -> list[str]:
        return self.new + self.changed

    def summary(self) -> str:
        return (
            f"{len(self.new)} new, {len(self.changed)} changed, {len(self.unchanged)} unchanged, "
            f"{len(self.deleted)} deleted, {len(self.rejected)} rejected, {len(self.deferred)} deferred, "
            f"{self.ignored} non-video files ignored"
        )


def _is_hidden(relpath: str) -> bool:
    return any(part.startswith(".") for part in relpath.split("/"))


def list_source(lake: LakeResource) -> tuple[list[SourceFile], dict, int]:
    """List the videos under the source root: (files, rejected {relpath: reason}, ignored count)."""
    settings = lake.settings()
    root = lake.source_root
    fs, root_path = lio.get_fs(root, settings)
    remote = lio.is_remote(root)
    root_path = root_path.rstrip("/")
    local_real = None
    if not remote:
        if not os.path.isdir(root_path):
            raise InputError(root, "source root is not a directory")
        local_real = os.path.realpath(root_path)
    files: list[SourceFile] = []
    rejected: dict = {}
    ignored = 0
    fs.invalidate_cache()  # a long-lived sensor process must not see a cached (stale) S3 listing
    found = fs.find(root_path, detail=True, withdirs=False)
    for path, info in sorted(found.items()):
        path = path.rstrip("/")
        if not path.startswith(root_path + "/"):
            continue
        rel = path[len(root_path) + 1 :]
        if _is_hidden(rel):
            continue
        if os.path.splitext(rel)[1].lower() not in VIDEO_EXTENSIONS:
            ignored += 1
            continue
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            rejected[rel] = "relative path has empty, '.' or '..' parts"
            continue
        if not remote:
            real = os.path.realpath(path)
            if os.path.commonpath([real, local_real]) != local_real:
                rejected[rel] = f"resolves outside the source root (to {real})"
                continue
            if not os.path.isfile(real):
                rejected[rel] = "not a regular file"
                continue
            st = os.stat(real)
            size, fp = st.st_size, f"{st.st_size}:{st.st_mtime_ns}"
            url = path
        else:
            size = int(info.get("size") or 0)
            etag = str(info.get("ETag") or info.get("etag") or info.get("LastModified") or "")
            fp = f"{size}:{etag.strip(chr(34))}"
            proto = root.split("://", 1)[0]
            url = f"{proto}://{path}"
        files.append(SourceFile(relpath=rel, url=url, size=size, fingerprint=fp))
    return files, rejected, ignored


def empty_manifest(lake: LakeResource) -> dict:
    return {"version": 1, "source": lake.source_root, "updated_at": None, "videos": {}, "rejected": {}}


def scan_source(
    lake: LakeResource,
    previous: Optional[dict] = None,
    hash_budget_s: Optional[float] = None,
    log: Optional[Callable[[str], None]] = None,
) -> ScanResult:
    """Compare the source with `previous` (a manifest; default: the one in the lake).

    Returns the new manifest in `ScanResult.manifest` (not yet written; see `write_manifest`).
    """
    log = log or (lambda m: None)
    prev = previous if previous is not None else lake.read_manifest()
    prev_videos: dict = dict(prev.get("videos", {}))
    settings = lake.settings()
    files, rejected, ignored = list_source(lake)
    res = ScanResult(rejected=dict(rejected), ignored=ignored)
    videos_out: dict = {k: dict(v) for k, v in prev_videos.items()}
    seen: set[str] = set()
    start = time.monotonic()
    now = _now()
    for f in files:
        key = partition_key_for(f.relpath)
        old = prev_videos.get(key)
        if old is not None and old.get("relpath") not in (None, f.relpath):
            res.rejected[f.relpath] = f"partition key {key} already used by {old.get('relpath')!r}"
            continue
        seen.add(key)
        present_before = old is not None and old.get("status") != "deleted"
        if present_before and old.get("fingerprint") == f.fingerprint and old.get("url") == f.url:
            res.unchanged.append(key)
            continue
        if hash_budget_s is not None and time.monotonic() - start > hash_budget_s:
            res.deferred.append(f.relpath)
            continue
        sha = lio.sha256_file(f.url, settings)
        entry = {
            "relpath": f.relpath,
            "url": f.url,
            "size": f.size,
            "fingerprint": f.fingerprint,
            "sha256": sha,
            "status": "present",
            "first_seen": (old or {}).get("first_seen", now) if present_before else now,
            "last_changed": now,
        }
        if not present_before:
            res.new.append(key)
        elif old.get("sha256") != sha:
            res.changed.append(key)
        else:
            entry["last_changed"] = old.get("last_changed", now)
            res.unchanged.append(key)
        videos_out[key] = entry
    deferred_keys = {partition_key_for(r) for r in res.deferred}
    missing = [
        k for k, v in prev_videos.items()
        if v.get("status") != "deleted" and k not in seen and k not in deferred_keys
    ]
    if missing and not files:
        res.outage = True
        log(f"source {lake.source_root} lists no video while {len(missing)} are known: "
            "treating it as an outage, nothing is marked deleted")
    else:
        for k in sorted(missing):
            videos_out[k] = {**videos_out[k], "status": "deleted", "deleted_at": now}
            res.deleted.append(k)
    res.manifest = {
        "version": 1,
        "source": lake.source_root,
        "updated_at": now,
        "videos": dict(sorted(videos_out.items())),
        "rejected": dict(sorted(res.rejected.items())),
    }
    return res


def write_manifest(lake: LakeResource, manifest: dict) -> str:
    url = lake.manifest_url()
    lio.write_json(url, manifest, lake.settings())
    return url


def register_videos(instance, lake: LakeResource, log: Optional[Callable[[str], None]] = None) -> ScanResult:
    """Scan the source, write the manifest and add/delete the dynamic partitions in `instance`.

    The same steps the sensor takes, applied directly (used by `longvila demo` and tests); it does
    not launch runs.
    """
    res = scan_source(lake, log=log)
    write_manifest(lake, res.manifest)
    existing = set(instance.get_dynamic_partitions(videos.name))
    present = [k for k, v in res.manifest["videos"].items() if v.get("status") != "deleted"]
    to_add = [k for k in present if k not in existing]
    if to_add:
        instance.add_dynamic_partitions(videos.name, to_add)
    for k in res.deleted:
        if k in existing:
            instance.delete_dynamic_partition(videos.name, k)
    return res


def _cursor_state(cursor: Optional[str]) -> Optional[dict]:
    if not cursor:
        return None
    try:
        data = json.loads(cursor)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("version") == 1 else None


def _cursor_for(manifest: dict) -> str:
    """Compact cursor: key -> [fingerprint, sha256, status] (the manifest holds the rest)."""
    return json.dumps(
        {
            "version": 1,
            "videos": {
                k: [v.get("fingerprint"), v.get("sha256"), v.get("status")]
                for k, v in manifest["videos"].items()
            },
        },
        separators=(",", ":"),
    )


def _previous_from(cursor_state: Optional[dict], manifest: dict) -> dict:
    """Previous state: the lake manifest, overridden by the cursor's fingerprints when present."""
    if cursor_state is None:
        return manifest
    vids = {}
    for k, (fp, sha, status) in cursor_state.get("videos", {}).items():
        base = dict(manifest.get("videos", {}).get(k, {}))
        base.update({"fingerprint": fp, "sha256": sha, "status": status})
        vids[k] = base
    return {**manifest, "videos": vids}


def evaluate_new_videos(context: SensorEvaluationContext, lake: LakeResource,
                        hash_budget_s: Optional[float] = HASH_BUDGET_S):
    """Body of the sensor (also callable directly in tests with `build_sensor_context`)."""
    log = context.log
    lake_manifest = lake.read_manifest()
    prev = _previous_from(_cursor_state(context.cursor), lake_manifest)
    try:
        res = scan_source(lake, previous=prev, hash_budget_s=hash_budget_s, log=log.error)
    except InputError as e:
        return SkipReason(str(e))
    for rel, why in res.rejected.items():
        log.warning(f"rejected {rel!r}: {why}")
    for k in res.deleted:
        log.warning(f"video deleted from the source: {res.manifest['videos'][k].get('relpath')!r} "
                    f"(partition {k}); partition removed, marked deleted in the manifest")
    # rewrite the manifest only when something in it changed (not on every 30 s tick)
    if (res.manifest["videos"], res.manifest["rejected"]) != (
        lake_manifest.get("videos"), lake_manifest.get("rejected")
    ):
        write_manifest(lake, res.manifest)
    log.info(f"scan of {lake.source_root}: {res.summary()}")
    run_requests = [
        RunRequest(
            run_key=f"{k}:{res.manifest['videos'][k]['sha256'][:16]}",
            partition_key=k,
            asset_selection=[RAW_VIDEO],
        )
        for k in res.to_run
    ]
    requests = []
    if res.new:  # adding a key that already exists is a no-op for Dagster
        requests.append(videos.build_add_request(res.new))
    if res.deleted:
        requests.append(videos.build_delete_request(res.deleted))
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=requests,
        cursor=_cursor_for(res.manifest),
    )


@sensor(
    name="new_video_sensor",
    target=AssetSelection.assets(RAW_VIDEO),
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Registers new/changed/deleted videos of the source as `videos` partitions and "
    "requests `raw_video` for new or changed ones (see orchestration/sensors.py).",
)
def new_video_sensor(context: SensorEvaluationContext, lake: LakeResource):
    return evaluate_new_videos(context, lake)


__all__ = [
    "VIDEO_EXTENSIONS",
    "ScanResult",
    "SourceFile",
    "list_source",
    "scan_source",
    "write_manifest",
    "register_videos",
    "evaluate_new_videos",
    "new_video_sensor",
]
