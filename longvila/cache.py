"""Content-addressed local copies of source videos: the exact bytes every curation step decodes.

`raw_video` calls `snapshot(url)`: one pass over the source that hashes the bytes *while copying them*
into the cache as `<sha256><suffix>`, so the recorded hash is the hash of the stored copy. Every later
step calls `pinned_copy(url, sha256)`, which yields a local path holding exactly those bytes: the cached
copy, or (evicted, another machine, cache disabled) a fresh copy of the source hashed on the way in. A
mismatch raises `SourceChangedError` naming both hashes: a step never silently curates other bytes.

Why a copy and not a re-hash of the source before use: a verified re-hash still leaves the moment
between the check and the decoder's reads (a file rewritten in place in that moment is curated
unnoticed), and costs one full read of the source per step. The copy costs one extra local write per
changed video (in raw_video's single pass), after which the five steps read the local copy instead of
the source (for `s3://` sources that replaces five downloads).

Leases: a step holds a shared flock on its copy while it uses it. Publishing, leasing and eviction
each take the cache folder's `.lock` briefly, and eviction (`trim_cache`, least recently used first)
removes only files it can lock exclusively: a file in use is never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import io as lio
from .errors import InputError
from .settings import Settings, default_cache_dir, default_cache_max_bytes


class SourceChangedError(InputError):
    """The source no longer holds the bytes its `raw_video` materialisation hashed."""

    def __init__(self, url: str, expected: str, actual: str):
        super().__init__(url, f"source changed since raw_video hashed it: expected sha256 {expected}, "
                              f"found {actual}; re-materialise raw_video for this partition")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class Snapshot:
    sha256: str
    size_bytes: int


@contextlib.contextmanager
def _cache_lock(root: Path) -> Iterator[None]:
    with open(root / ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def _copy_hashing(url: str, dest: Path, settings: Settings | None) -> Snapshot:
    """Copy the source into `dest` (held under an exclusive flock: a live write) while hashing it."""
    fs, path = lio.get_fs(url, settings)
    h = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as src, open(dest, "wb") as out:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX)
        while chunk := src.read(lio.CHUNK):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return Snapshot(h.hexdigest(), size)


def _lease(path: Path) -> int | None:
    """A shared flock on `path` (call under the cache lock); the fd, or None if it is not there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.utime(path)  # recently used: evicted last
    return fd


def _fetch(url: str, root: Path, suffix: str, settings: Settings | None, expected: str | None) -> tuple[Snapshot, int]:
    """Copy `url` into the cache (verified against `expected` when given); return it and a lease on it."""
    tmp = lio.temp_path(root / "fetch", suffix)
    try:
        snap = _copy_hashing(url, tmp, settings)
        if expected is not None and snap.sha256 != expected:
            raise SourceChangedError(url, expected, snap.sha256)
        dest = root / f"{snap.sha256}{suffix}"
        with _cache_lock(root):
            fd = _lease(dest)
            if fd is None:  # else an identical copy is already there: keep it
                os.replace(tmp, dest)
                fd = _lease(dest)
        return snap, fd
    finally:
        tmp.unlink(missing_ok=True)


def _cache_root(cache_dir: str | os.PathLike | None, max_bytes: int | None) -> tuple[Path | None, int]:
    max_bytes = default_cache_max_bytes() if max_bytes is None else int(max_bytes)
    if max_bytes <= 0:
        return None, 0
    root = Path(cache_dir or default_cache_dir())
    root.mkdir(parents=True, exist_ok=True)
    lio.sweep_once(root)
    return root, max_bytes


def snapshot(url: str, settings: Settings | None = None, *, suffix: str = "",
             cache_dir: str | os.PathLike | None = None, max_bytes: int | None = None) -> Snapshot:
    """Hash the source's bytes while copying them into the cache (one read of the source). With the
    cache disabled (`max_bytes` 0) only the hash is taken; later steps then copy and verify."""
    root, max_bytes = _cache_root(cache_dir, max_bytes)
    if root is None:
        fs, path = lio.get_fs(url, settings)
        with fs.open(path, "rb") as f:
            return Snapshot(lio.sha256_stream(f), int(fs.size(path)))
    snap, fd = _fetch(url, root, suffix, settings, expected=None)
    try:
        trim_cache(root, max_bytes)
    finally:
        os.close(fd)
    return snap


@contextlib.contextmanager
def pinned_copy(url: str, sha256: str, settings: Settings | None = None, *, suffix: str = "",
                cache_dir: str | os.PathLike | None = None, max_bytes: int | None = None) -> Iterator[str]:
    """Yield a local path whose bytes hash to `sha256` (the source's bytes when `raw_video` hashed
    them), leased for the duration of the block. SourceChangedError if the source no longer has them."""
    root, max_bytes = _cache_root(cache_dir, max_bytes)
    if root is None:
        tmp = lio.temp_path(lio.staging_dir() / "pinned", suffix)
        try:
            snap = _copy_hashing(url, tmp, settings)
            if snap.sha256 != sha256:
                raise SourceChangedError(url, sha256, snap.sha256)
            yield str(tmp)
        finally:
            tmp.unlink(missing_ok=True)
        return
    dest = root / f"{sha256}{suffix}"
    with _cache_lock(root):
        fd = _lease(dest)
    if fd is None:
        _, fd = _fetch(url, root, suffix, settings, expected=sha256)
        trim_cache(root, max_bytes)
    try:
        yield str(dest)
    finally:
        os.close(fd)


def trim_cache(cache_dir: str | os.PathLike, max_bytes: int) -> list[str]:
    """Delete least recently used copies until the cache holds at most `max_bytes`, skipping every copy
    that a step holds a lease on; returns the names removed."""
    root = Path(cache_dir)
    removed: list[str] = []
    with _cache_lock(root):
        files = [(p, p.stat()) for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
        total = sum(st.st_size for _, st in files)
        for p, st in sorted(files, key=lambda f: f[1].st_mtime):
            if total <= max_bytes:
                break
            fd = lio.try_lock(p)
            if fd is None:
                continue  # in use
            try:
                p.unlink(missing_ok=True)
            finally:
                os.close(fd)
            total -= st.st_size
            removed.append(p.name)
    return removed
