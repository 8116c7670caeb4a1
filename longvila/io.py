"""Atomic, fsspec-aware I/O: nothing half-written is ever visible under a final name.

Local paths: write to a hidden temporary sibling, fsync, then `os.replace` (atomic on POSIX).
Remote URLs (s3://...): write to a local temporary file, then upload it with a single `put`, so the
object appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec

from .settings import Settings

CHUNK = 1 << 20


def is_remote(url: str | os.PathLike) -> bool:
    s = str(url)
    return "://" in s and not s.startswith("file://")


def get_fs(url: str | os.PathLike, settings: Settings | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return (filesystem, path-inside-it) for a local path or URL, with S3 options from settings."""
    settings = settings or Settings()
    s = str(url)
    fs, path = fsspec.core.url_to_fs(s, **settings.storage_options_for(s))
    return fs, path


def join(base: str | os.PathLike, *parts: str) -> str:
    s = str(base).rstrip("/")
    return "/".join([s, *[p.strip("/") for p in parts]])


@contextlib.contextmanager
def atomic_write(url: str | os.PathLike, mode: str = "wb", settings: Settings | None = None) -> Iterator[Any]:
    """Open `url` for writing; the file appears under its name only if the block succeeds."""
    if "w" not in mode:
        raise ValueError("atomic_write needs a write mode")
    s = str(url)
    if not is_remote(s):
        path = Path(s[len("file://"):] if s.startswith("file://") else s)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return
    fs, rpath = get_fs(s, settings)
    fd, tmp = tempfile.mkstemp(prefix=".upload-")
    os.close(fd)
    try:
        with open(tmp, mode) as f:
            yield f
        fs.put_file(tmp, rpath)
    finally:
        os.unlink(tmp)


def write_bytes(url: str | os.PathLike, data: bytes, settings: Settings | None = None) -> None:
    with atomic_write(url, "wb", settings) as f:
        f.write(data)


def write_text(url: str | os.PathLike, text: str, settings: Settings | None = None) -> None:
    write_bytes(url, text.encode("utf-8"), settings)


def write_json(url: str | os.PathLike, obj: Any, settings: Settings | None = None) -> None:
    write_text(url, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", settings)


def read_bytes(url: str | os.PathLike, settings: Settings | None = None) -> bytes:
    fs, path = get_fs(url, settings)
    with fs.open(path, "rb") as f:
        return f.read()


def read_json(url: str | os.PathLike, settings: Settings | None = None) -> Any:
    return json.loads(read_bytes(url, settings).decode("utf-8"))


def exists(url: str | os.PathLike, settings: Settings | None = None) -> bool:
    fs, path = get_fs(url, settings)
    return fs.exists(path)


def write_parquet(table, url: str | os.PathLike, settings: Settings | None = None) -> None:
    """Write a pyarrow Table atomically (zstd-compressed Parquet)."""
    write_bytes(url, parquet_bytes(table), settings)


def read_parquet(url: str | os.PathLike, settings: Settings | None = None, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    data = read_bytes(url, settings)
    return pq.read_table(io.BytesIO(data), columns=columns)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a local directory under a temporary name; it replaces `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parquet_bytes(table) -> bytes:
    """Serialise a pyarrow Table to zstd-compressed Parquet bytes (what `write_parquet` writes), so
    that a caller can hash exactly the bytes it stores."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def sha256_stream(f, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    while True:
        b = f.read(chunk)
        if not b:
            break
        h.update(b)
    return h.hexdigest()


def sha256_file(url: str | os.PathLike, settings: Settings | None = None) -> str:
    fs, path = get_fs(url, settings)
    with fs.open(path, "rb") as f:
        return sha256_stream(f)


def sha256_tree(path: str | os.PathLike) -> str:
    """Content hash of a local directory: sorted relative names and file contents."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode())
        h.update(b"\0")
        with open(p, "rb") as f:
            h.update(sha256_stream(f).encode())
    return h.hexdigest()


@contextlib.contextmanager
def local_copy(url: str | os.PathLike, settings: Settings | None = None, suffix: str = "",
               cache_dir: str | os.PathLike | None = None, cache_max_bytes: int | None = None) -> Iterator[str]:
    """Yield a local filesystem path for `url`: the path itself when local; for a remote URL a temporary
    download, or, with `cache_dir`, a cached copy (see `cached_copy`) that later calls reuse."""
    s = str(url)
    if not is_remote(s):
        yield s[len("file://"):] if s.startswith("file://") else s
        return
    if cache_dir is not None and (cache_max_bytes is None or cache_max_bytes > 0):
        yield cached_copy(s, cache_dir, settings, suffix=suffix, max_bytes=cache_max_bytes)
        return
    fs, path = get_fs(s, settings)
    fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=suffix)
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        yield tmp
    finally:
        os.unlink(tmp)


_FINGERPRINT_FIELDS = ("ETag", "etag", "VersionId", "LastModified", "mtime", "created", "size")
_CACHE_GRACE_S = 600.0


def remote_fingerprint(url: str, settings: Settings | None = None) -> str:
    """A cheap identity of a remote object's current content: URL + ETag/mtime/size from `fs.info`
    (no download). A changed object gets a new fingerprint, so a cache never serves stale bytes."""
    fs, path = get_fs(url, settings)
    info = fs.info(path)
    parts = [url] + [f"{k}={info[k]}" for k in _FINGERPRINT_FIELDS if info.get(k) is not None]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def cached_copy(url: str, cache_dir: str | os.PathLike, settings: Settings | None = None, suffix: str = "",
                max_bytes: int | None = None) -> str:
    """Local copy of a remote object in `cache_dir`, keyed by its fingerprint: downloaded once (to a
    temporary name, then renamed, so concurrent steps never see a partial file), then reused. After a
    download the cache is trimmed to `max_bytes`, least recently used first, sparing files used in the
    last 10 minutes (another step may be about to open them)."""
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / f"{remote_fingerprint(url, settings)}{suffix}"
    if dest.exists():
        os.utime(dest)  # recently used: last to be evicted
        return str(dest)
    fs, path = get_fs(url, settings)
    tmp = root / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        fs.get_file(path, str(tmp))
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    if max_bytes is not None:
        trim_cache(root, max_bytes, keep=dest)
    return str(dest)


def trim_cache(cache_dir: str | os.PathLike, max_bytes: int, keep: Path | None = None) -> list[str]:
    """Delete least recently used files until the cache holds at most `max_bytes`; returns what went."""
    import time

    files = [p for p in Path(cache_dir).iterdir() if p.is_file() and not p.name.startswith(".")]
    total = sum(p.stat().st_size for p in files)
    removed: list[str] = []
    now = time.time()
    for p in sorted(files, key=lambda q: q.stat().st_mtime):
        if total <= max_bytes:
            break
        if p == keep or now - p.stat().st_mtime < _CACHE_GRACE_S:
            continue
        total -= p.stat().st_size
        p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed
