"""One writer per directory: an exclusive lock that names its holder, with stale-lock recovery.

    with DirLock(out_dir, timeout=0, description="stage3 run abc") as lock:
        ...                 # write; call lock.check() before each write that must not race
                            # (raises LockLost if the lease was taken over)

* Local directory: an advisory `fcntl.flock` on `<dir>/.lock`. The kernel drops it when the holder
  exits, however it dies (SIGKILL included), so a crashed holder never blocks the next writer; the file
  also carries the holder's JSON (pid, host, started, heartbeat, description) for the error message.
* Object storage (`s3://...`): a lease object `<dir>/.lock.json`, created with a conditional PUT
  (`If-None-Match: *`) so that exactly one writer wins, renewed by a heartbeat thread every ttl/3 with
  `If-Match: <its ETag>`. A lease whose heartbeat is older than `ttl` (or whose holder process is gone,
  when it ran on this host) is stale and is taken over, again by a conditional PUT on the stale ETag, so
  two recoverers cannot both win. A holder whose renewal fails has lost the lease: `check()` raises.

`timeout` 0 fails at once with `LockHeld` naming the holder; > 0 waits up to that many seconds.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from . import io as lio
from .errors import InputError

LOCAL_NAME = ".lock"
LEASE_NAME = ".lock.json"


class LockHeld(InputError):
    """Another writer holds the directory."""


class LockLost(RuntimeError):
    """This writer's lease was taken over (its heartbeat stopped for longer than the ttl)."""


def _holder(description: str) -> dict:
    now = time.time()
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": now, "heartbeat": now,
            "description": description}


def describe(h: dict | None) -> str:
    if not h:
        return "an unknown holder"
    age = time.time() - float(h.get("heartbeat", 0))
    return (f"pid {h.get('pid')} on host {h.get('host')} ({h.get('description') or 'no description'}), "
            f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(h.get('started', 0))))}, "
            f"last heartbeat {age:.0f} s ago")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's counts; a zombie child of this process does
    not, and is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # not a child of this process
        return True


class DirLock:
    """Exclusive writer lock of a local directory or an object-storage prefix (see module doc)."""

    def __init__(self, directory: str | os.PathLike, *, timeout: float = 0.0, ttl: float = 60.0,
                 description: str = "", poll: float = 0.5):
        self.directory = str(directory)
        self.timeout, self.ttl, self.poll = float(timeout), float(ttl), float(poll)
        self.info = _holder(description)
        self.remote = lio.is_remote(self.directory)
        self._fd: int | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    # ---------------------------------------------------------------------------------- public
    def acquire(self) -> "DirLock":
        deadline = time.monotonic() + self.timeout
        while True:
            holder = self._try_remote() if self.remote else self._try_local()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise LockHeld(self.directory, f"another run is writing here: {describe(holder)}")
            time.sleep(self.poll)
        self._thread = threading.Thread(target=self._heartbeat, name="dirlock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        if self._lost:
            raise LockLost(f"{self.directory}: {self._lost}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.remote:
            self._release_remote()
        elif self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ---------------------------------------------------------------------------------- local
    def _try_local(self) -> dict | None:
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCAL_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                raw = os.pread(fd, 1 << 16, 0)
                return json.loads(raw) if raw.strip() else {}
            except ValueError:
                return {}
            finally:
                os.close(fd)
        self._fd = fd
        self._write_local()
        return None

    def _write_local(self) -> None:
        data = json.dumps(self.info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    # ---------------------------------------------------------------------------------- remote
    def _s3(self, method: str, **kw):
        """One S3 call on the lease object (s3fs's client: its retries and error translation)."""
        from fsspec.asyn import sync

        fs, path = lio.get_fs(self._lease_url())
        bucket, key, _ = fs.split_path(path)

        async def call():
            out = await fs._call_s3(method, Bucket=bucket, Key=key, **kw)
            if "Body" in out:
                out["Body"] = await out["Body"].read()
            return out

        return sync(fs.loop, call)

    def _lease_url(self) -> str:
        return lio.join(self.directory, LEASE_NAME)

    def _put(self, **condition) -> str:
        return self._s3("put_object", Body=json.dumps(self.info).encode(), **condition)["ETag"]

    def _try_remote(self) -> dict | None:
        try:
            self._etag = self._put(IfNoneMatch="*")
            return None
        except FileExistsError:
            pass
        try:
            got = self._s3("get_object")
        except FileNotFoundError:
            return {}  # released between our PUT and GET: try again
        holder = json.loads(got["Body"] or b"{}")
        if not self._stale(holder):
            return holder
        try:
            self._etag = self._put(IfMatch=got["ETag"])
            return None
        except OSError:  # another recoverer won the takeover
            return holder

    def _stale(self, h: dict) -> bool:
        if time.time() - float(h.get("heartbeat", 0)) > self.ttl:
            return True
        return h.get("host") == socket.gethostname() and not pid_alive(int(h.get("pid", 0)))

    def _release_remote(self) -> None:
        if self._lost or self._etag is None:
            return
        try:
            if self._s3("head_object")["ETag"] == self._etag:
                self._s3("delete_object")
        except FileNotFoundError:
            pass
        self._etag = None

    # ---------------------------------------------------------------------------------- heartbeat
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.info["heartbeat"] = time.time()
            try:
                if self.remote:
                    self._etag = self._put(IfMatch=self._etag)
                else:
                    self._write_local()
            except OSError as e:
                self._lost = f"lease renewal failed ({e}); another writer may have taken over"
                return
