"""The video source, its manifest and the scan that keeps them in step (no Dagster).

Listing: `list_source` walks the source root (`Settings.source`, a local folder or ``s3://bucket/prefix``,
recursively, through fsspec) and keeps files whose extension is in `VIDEO_EXTENSIONS`. Hidden files and
folders (a path part starting with ``.``, e.g. partial uploads ``.x.tmp``) are skipped. A path whose real
location is outside the root (an escaping symlink) or that has ``.``/``..`` parts is *rejected* with a
reason, never registered.

Identity: each file gets a cheap fingerprint from the listing alone, ``size:mtime_ns`` locally and
``size:ETag`` on S3. A scan never reads file contents, so its cost is bounded by the number of files,
whatever their size; the content hash (the data version) is computed later by the ``raw_video`` asset.

`scan_source` compares a listing with the previous manifest and returns a `ScanResult`: new, changed
(fingerprint or URL differs), unchanged, removed keys and rejected paths, plus the next manifest. Each
new or changed video gets the next *generation* number of its key, so `run_key` is unique per detected
change: content that goes A -> B -> A is curated three times, even when S3 gives A its old ETag back.
A listing that finds no video while the manifest has some is an outage, not a mass removal: nothing is
marked removed.

The manifest, ``<storage>/manifest/videos.json`` (atomic write), maps each partition key to

    {"relpath", "url", "size", "fingerprint", "generation", "status": "present" | "removed",
     "first_seen", "last_changed", ["removed_at", "removed_reason"]}

and lists the rejected paths with their reasons. Assets resolve a key with `video_entry`; datasets
take `present_keys`. A removed video keeps its entry (and its partition and history) for provenance;
if it comes back under the same relative path it gets the same key and counts as changed.

The scan state of the new-video sensor (`encode_cursor` / `previous_state`) is the fingerprint and
generation of each present key, kept in the lake (``manifest/scan-state/<sha256>.json``); the cursor
holds only that digest (~100 bytes at any corpus size); the rest lives in the manifest.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import io as lio
from .errors import InputError
from .keys import partition_key_for
from .settings import Settings

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
     ".wmv", ".3gp", ".ogv"}
)
MANIFEST_RELPATH = "manifest/videos.json"
MANIFEST_VERSION = 2
CURSOR_VERSION = 3
PRESENT, REMOVED = "present", "removed"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SourceFile:
    relpath: str
    url: str
    size: int
    fingerprint: str  # "size:mtime_ns" (local) or "size:etag" (s3)


@dataclass
class Listing:
    files: list[SourceFile] = field(default_factory=list)
    rejected: dict = field(default_factory=dict)  # relpath -> reason
    ignored: int = 0  # files without a video extension


def _is_hidden(relpath: str) -> bool:
    return any(part.startswith(".") for part in relpath.split("/"))


def _local_file(path: str, rel: str, real_root: str) -> SourceFile | str:
    """A SourceFile for a local path, or the reason it is rejected."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, real_root]) != real_root:
        return f"resolves outside the source root (to {real})"
    if not os.path.isfile(real):
        return "not a regular file"
    st = os.stat(real)
    return SourceFile(relpath=rel, url=path, size=st.st_size, fingerprint=f"{st.st_size}:{st.st_mtime_ns}")


def _remote_file(path: str, rel: str, info: dict, protocol: str) -> SourceFile:
    size = int(info.get("size") or 0)
    etag = str(info.get("ETag") or info.get("etag") or info.get("LastModified") or "").strip('"')
    return SourceFile(relpath=rel, url=f"{protocol}://{path}", size=size, fingerprint=f"{size}:{etag}")


def list_source(settings: Settings) -> Listing:
    """List the videos under `settings.source` (see the module docstring). InputError if the root is missing."""
    root = settings.source.rstrip("/")
    fs, root_path = lio.get_fs(root, settings)
    root_path = root_path.rstrip("/")
    remote = lio.is_remote(root)
    if not remote and not os.path.isdir(root_path):
        raise InputError(root, "source root is not a directory")
    real_root = None if remote else os.path.realpath(root_path)
    out = Listing()
    fs.invalidate_cache()  # a long-lived sensor process must not see a cached (stale) S3 listing
    for path, info in sorted(fs.find(root_path, detail=True, withdirs=False).items()):
        path = path.rstrip("/")
        if not path.startswith(root_path + "/"):
            continue
        rel = path[len(root_path) + 1:]
        if _is_hidden(rel):
            continue
        if os.path.splitext(rel)[1].lower() not in VIDEO_EXTENSIONS:
            out.ignored += 1
            continue
        if any(p in ("", ".", "..") for p in rel.split("/")):
            out.rejected[rel] = "relative path has empty, '.' or '..' parts"
            continue
        f = _remote_file(path, rel, info, root.split("://", 1)[0]) if remote else _local_file(path, rel, real_root)
        if isinstance(f, str):
            out.rejected[rel] = f
        else:
            out.files.append(f)
    return out


@dataclass
class ScanResult:
    """Outcome of one scan of the source against the previous manifest."""

    new: list[str] = field(default_factory=list)  # keys never seen
    changed: list[str] = field(default_factory=list)  # fingerprint changed, or back after removal
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # keys that disappeared from the source now
    rejected: dict = field(default_factory=dict)  # relpath -> reason
    ignored: int = 0
    deferred: int = 0  # new or changed videos left for the next scan (the per-scan bound)
    outage: bool = False  # the listing was empty while videos were known: nothing removed
    manifest: dict = field(default_factory=dict)  # the next manifest (not yet written)

    @property
    def to_run(self) -> list[str]:
        return self.new + self.changed

    def summary(self) -> str:
        return (f"{len(self.new)} new, {len(self.changed)} changed, {len(self.unchanged)} unchanged, "
                f"{len(self.removed)} removed, {len(self.rejected)} rejected, {self.deferred} deferred to the next "
                f"scan, {self.ignored} non-video files ignored")


def empty_manifest(source: str) -> dict:
    return {"version": MANIFEST_VERSION, "source": source, "updated_at": None, "videos": {}, "rejected": {}}


def _entry(f: SourceFile, old: Optional[dict], now: str) -> dict:
    return {"relpath": f.relpath, "url": f.url, "size": f.size, "fingerprint": f.fingerprint,
            "generation": int((old or {}).get("generation", 0)) + 1, "status": PRESENT,
            "first_seen": (old or {}).get("first_seen", now), "last_changed": now}


def scan_source(settings: Settings, previous: dict, log: Optional[Callable[[str], None]] = None,
                max_changes: Optional[int] = None) -> ScanResult:
    """Compare the source with `previous` (a manifest); the next manifest is in `ScanResult.manifest`.
    At most `max_changes` new or changed videos are taken (in listing order); the others stay as they were
    in `previous` and are counted in `ScanResult.deferred`, for the next scan."""
    listing = list_source(settings)
    prev = previous.get("videos", {})
    res = ScanResult(rejected=dict(listing.rejected), ignored=listing.ignored)
    videos = {k: dict(v) for k, v in prev.items()}
    seen: set[str] = set()
    now = utc_now()
    for f in listing.files:
        key = partition_key_for(f.relpath)
        old = prev.get(key)
        if old is not None and old.get("relpath") != f.relpath:
            res.rejected[f.relpath] = f"partition key {key} already used by {old.get('relpath')!r}"
            continue
        seen.add(key)
        present = old is not None and old.get("status") == PRESENT
        if present and (old.get("fingerprint"), old.get("url")) == (f.fingerprint, f.url):
            res.unchanged.append(key)
            continue
        if max_changes is not None and len(res.new) + len(res.changed) >= max_changes:
            res.deferred += 1
            continue
        (res.changed if old is not None else res.new).append(key)
        videos[key] = _entry(f, old, now)
    missing = sorted(k for k, v in prev.items() if v.get("status") == PRESENT and k not in seen)
    if missing and not listing.files:
        res.outage = True
        (log or (lambda m: None))(f"source {settings.source} lists no video while {len(missing)} are known: "
                                  "treating it as an outage, nothing is marked removed")
    else:
        for k in missing:
            videos[k] = {**videos[k], "status": REMOVED, "removed_at": now,
                         "removed_reason": f"no longer listed in the source {settings.source}"}
        res.removed = missing
    res.manifest = {**empty_manifest(settings.source), "updated_at": now, "videos": dict(sorted(videos.items())),
                    "rejected": dict(sorted(res.rejected.items()))}
    return res


# ---------------------------------------------------------------------------------------- manifest
def manifest_url(storage: str) -> str:
    return lio.join(storage, MANIFEST_RELPATH)


def read_manifest(settings: Settings) -> dict:
    """The manifest in the lake, or an empty one if no scan has written it yet."""
    url = manifest_url(settings.storage)
    if not lio.exists(url, settings):
        return empty_manifest(settings.source)
    return lio.read_json(url, settings)


_SHARED: dict[str, tuple[tuple, dict]] = {}
_SHARED_LOCK = threading.Lock()


def shared_manifest(settings: Settings) -> dict:
    """The manifest for read-only lookups, parsed once per process while the file is unchanged (its size,
    mtime/ETag and inode from one stat): every step of a run asks for its video's entry, and at 100k videos the
    manifest is tens of MB. Callers must not modify the result (`read_manifest` gives a private copy)."""
    url = manifest_url(settings.storage)
    fs, path = lio.get_fs(url, settings)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return empty_manifest(settings.source)
    identity = tuple(str(info.get(k)) for k in ("size", "mtime", "LastModified", "ETag", "ino", "created"))
    with _SHARED_LOCK:
        cached = _SHARED.get(url)
        if cached is None or cached[0] != identity:
            cached = _SHARED[url] = (identity, lio.read_json(url, settings))
    return cached[1]


def write_manifest(settings: Settings, manifest: dict) -> str:
    url = manifest_url(settings.storage)
    lio.write_json(url, manifest, settings)
    return url


def video_entry(manifest: dict, key: str) -> dict:
    """The manifest entry of a present video; InputError naming the key (unknown) or the file (removed)."""
    entry = manifest.get("videos", {}).get(key)
    if entry is None:
        raise InputError(key, f"no video with partition key {key!r} in the manifest")
    if entry.get("status") != PRESENT:
        raise InputError(entry.get("url", key), f"video was removed from the source at {entry.get('removed_at')} "
                                                f"({entry.get('removed_reason')}); partition {key}")
    return entry


def present_keys(manifest: dict) -> list[str]:
    return sorted(k for k, v in manifest.get("videos", {}).items() if v.get("status") == PRESENT)


def removed_videos(manifest: dict) -> list[dict]:
    """[{key, relpath, removed_at, removed_reason}] of the removed videos, newest removal first."""
    rows = [{"key": k, "relpath": v.get("relpath"), "removed_at": v.get("removed_at"),
             "removed_reason": v.get("removed_reason")}
            for k, v in manifest.get("videos", {}).items() if v.get("status") == REMOVED]
    return sorted(rows, key=lambda r: (r["removed_at"] or "", r["key"]), reverse=True)


def run_key(key: str, entry: dict) -> str:
    """Run key of one detected change of a video: key, a digest of its fingerprint and its generation."""
    digest = hashlib.sha1(f"{entry['url']}\0{entry['fingerprint']}".encode()).hexdigest()[:12]
    return f"{key}:{digest}:{entry['generation']}"


# ---------------------------------------------------------------------------------------- cursor
STATE_DIR = "manifest/scan-state"
STATE_KEEP = 8  # newest state files kept in the lake (a cursor only ever names the newest few)


def _state_url(storage: str, digest: str) -> str:
    return lio.join(storage, STATE_DIR, f"{digest}.json")


def encode_cursor(manifest: dict, settings: Settings) -> str:
    """A small cursor naming the scan state {key: [fingerprint, generation]} of the present videos.

    The state itself goes to the lake, content-addressed (``manifest/scan-state/<sha256>.json``, written
    before the cursor is committed, so a cursor always names a complete file); the cursor holds only its
    digest and count, whatever the number of videos. Older state files beyond `STATE_KEEP` are removed.
    """
    videos = {k: [v["fingerprint"], v["generation"]] for k, v in manifest["videos"].items()
              if v.get("status") == PRESENT}
    body = json.dumps(videos, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(body).hexdigest()
    url = _state_url(settings.storage, digest)
    if not lio.exists(url, settings):
        lio.write_bytes(url, body, settings)
        _prune_states(settings, keep=digest)
    return json.dumps({"version": CURSOR_VERSION, "state": digest, "videos": len(videos)}, separators=(",", ":"))


def _prune_states(settings: Settings, keep: str) -> None:
    fs, root = lio.get_fs(lio.join(settings.storage, STATE_DIR), settings)
    try:
        infos = sorted(fs.ls(root, detail=True), key=lambda i: i.get("mtime") or i.get("LastModified") or 0)
    except FileNotFoundError:
        return
    old = [i["name"] for i in infos if not i["name"].endswith(f"{keep}.json")][:-(STATE_KEEP - 1) or None]
    for name in old:
        fs.rm(name)


def previous_state(cursor: Optional[str], manifest: dict, settings: Settings) -> dict:
    """The manifest as of the cursor: entries of the lake manifest with the fingerprints and generations of
    the state the cursor names (the cursor is committed with the run requests, the manifest may be ahead of
    it). Without a usable cursor (or its state file), the lake manifest itself."""
    try:
        state = json.loads(cursor) if cursor else None
    except ValueError:
        state = None
    if not isinstance(state, dict) or state.get("version") != CURSOR_VERSION:
        return manifest
    url = _state_url(settings.storage, str(state.get("state")))
    if not lio.exists(url, settings):
        return manifest
    known = json.loads(lio.read_bytes(url, settings))
    videos = {}
    for k, v in manifest.get("videos", {}).items():
        if k in known:
            fp, gen = known[k]
            videos[k] = {**v, "fingerprint": fp, "generation": gen, "status": PRESENT}
        else:
            videos[k] = {**v, "status": REMOVED} if v.get("status") == PRESENT else v
    return {**manifest, "videos": videos}
