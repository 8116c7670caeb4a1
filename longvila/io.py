"""Atomic, fsspec-aware I/O: nothing half-written is ever visible under a final name.

Local paths: write to a hidden temporary sibling, fsync, then `os.replace` (atomic on POSIX).
Remote URLs (s3://...): write to a local temporary file, then upload it with a single `put`, so the
object appears whole or not at all. Directories (`atomic_dir`) are published with one atomic
rename or rename-exchange, safe under concurrent writers of the same target.

Temporary names (`temp_path`) are `.<name>.tmp-<12 hex>`; the writer holds an exclusive flock on
its temporary file or folder, so `clean_stale_temps` removes only what a killed writer left behind
(unlocked and older than LONGVILA_STALE_TEMP_S). Every local writer here sweeps its target folder
once per process before its first write there.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec

from .settings import Settings, Timeouts

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


# ---------------------------------------------------------------------------------------------
# temporary names: every writer here builds under `.<name>.tmp-<12 hex>[suffix]` next to its target and
# holds an exclusive flock on it while it writes, so a sweep can tell a killed writer's leftovers
# (unlocked and old) from a live writer's work (locked, or younger than the threshold)

_TEMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{12}(\.[A-Za-z0-9]{1,8})?$")
_swept: set[str] = set()


def temp_path(final: str | os.PathLike, suffix: str = "") -> Path:
    """A fresh temporary sibling of `final` in the naming scheme `clean_stale_temps` recognises."""
    f = Path(final)
    return f.parent / f".{f.name}.tmp-{uuid.uuid4().hex[:12]}{suffix}"


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_RE.match(name))


def try_lock(path: Path) -> int | None:
    """Open `path` (file or folder) and take a non-blocking exclusive flock; the fd, or None if another
    process holds a lock on it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _held_temp(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on a temporary file or folder that this process is writing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_temps(directory: str | os.PathLike, older_than_s: float | None = None) -> list[str]:
    """Remove temporary files/folders of killed writers from `directory` (not recursive): names in this
    module's temp scheme, modified more than `older_than_s` ago (default LONGVILA_STALE_TEMP_S) and not
    locked by a live writer. Returns the names removed."""
    d = Path(directory)
    age = Timeouts.from_env().stale_temp_s if older_than_s is None else float(older_than_s)
    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(d) if is_temp_name(e.name)]
    except FileNotFoundError:
        return removed
    now = time.time()
    for e in entries:
        try:
            if now - e.stat(follow_symlinks=False).st_mtime < age:
                continue
        except FileNotFoundError:
            continue
        fd = try_lock(Path(e.path))
        if fd is None:
            continue  # a live writer holds it (or it vanished)
        try:
            _remove(Path(e.path))
            removed.append(e.name)
        finally:
            os.close(fd)
    return removed


def sweep_once(directory: str | os.PathLike) -> None:
    """`clean_stale_temps(directory)` the first time this process writes into `directory`."""
    key = os.path.abspath(directory)
    if key not in _swept:
        _swept.add(key)
        clean_stale_temps(key)


def staging_dir() -> Path:
    """Local folder for temporary copies of remote uploads/downloads (swept like any other)."""
    d = Path(tempfile.gettempdir()) / f"longvila-staging-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    sweep_once(d)
    return d


def _local_path(url: str | os.PathLike) -> Path:
    s = str(url)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


@contextlib.contextmanager
def atomic_write(url: str | os.PathLike, mode: str = "wb", settings: Settings | None = None) -> Iterator[Any]:
    """Open `url` for writing; the file appears under its name only if the block succeeds."""
    if "w" not in mode:
        raise ValueError("atomic_write needs a write mode")
    s = str(url)
    remote = is_remote(s)
    if remote:
        tmp = temp_path(staging_dir() / "upload")
    else:
        path = _local_path(s)
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_once(path.parent)
        tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield f
            f.flush()
            os.fsync(f.fileno())
            if remote:
                fs, rpath = get_fs(s, settings)
                fs.put_file(str(tmp), rpath)
            else:
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


@functools.lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    """Linux renameat2(2) through libc; OSError(errno) on failure (ENOSYS/EINVAL where unsupported)."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(src), None, str(dst))


_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def _publish_dir(tmp: Path, final: Path) -> Path | None:
    """Make the complete folder `tmp` appear as `final` in one atomic step, whatever other writers do.

    Returns the folder that `final` held before (now under a temporary name, for the caller to delete),
    or None. First publication: rename with RENAME_NOREPLACE; replacement: RENAME_EXCHANGE swaps the
    two names atomically, so `final` is never missing and a concurrent writer never fails (the last
    swap wins). Without renameat2 (non-Linux, or a filesystem without the flags) the writers serialise
    on a lock file and replace in two renames: writers stay safe, but a reader may find `final` missing
    for the instant between the renames."""
    while True:
        try:
            _renameat2(tmp, final, _RENAME_NOREPLACE)
            return None
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return _publish_dir_locked(tmp, final)
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        try:
            _renameat2(tmp, final, _RENAME_EXCHANGE)
            return tmp  # the previous content now lives under the temporary name
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return _publish_dir_locked(tmp, final)
            if e.errno != errno.ENOENT:  # ENOENT: `final` vanished in between; publish afresh
                raise


def _publish_dir_locked(tmp: Path, final: Path) -> Path | None:
    lock = final.parent / f".{final.name}.lock"
    with open(lock, "a") as lf:
        fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
        old = None
        if final.exists():
            old = temp_path(final)
            os.replace(final, old)
        os.replace(tmp, final)
        return old


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a local directory under a temporary name; it replaces `path` only if the block succeeds.

    Safe with concurrent writers of the same `path` (each publication is atomic, the last one wins,
    none fails) and readers never see `path` missing once it exists (see `_publish_dir`)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_once(final.parent)
    tmp = temp_path(final)
    tmp.mkdir()
    try:
        with _held_temp(tmp):
            yield tmp
            old = _publish_dir(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
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
def local_copy(url: str | os.PathLike, settings: Settings | None = None, suffix: str = "") -> Iterator[str]:
    """Yield a local filesystem path for `url`: the path itself when local, else a temporary download
    (removed afterwards). For content-pinned, cached copies of videos see `longvila.cache`."""
    s = str(url)
    if not is_remote(s):
        yield str(_local_path(s))
        return
    fs, path = get_fs(s, settings)
    tmp = temp_path(staging_dir() / "download", suffix)
    try:
        with open(tmp, "wb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            fs.get_file(path, str(tmp))
            yield str(tmp)
    finally:
        tmp.unlink(missing_ok=True)
