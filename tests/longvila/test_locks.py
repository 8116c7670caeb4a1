"""One writer per directory (longvila.locks): local flock and the S3 lease, fail-fast naming the holder,
waiting, stale-lock recovery after a crash, lost-lease detection."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from longvila.locks import LEASE_NAME, DirLock, LockHeld, LockLost

HOLD = """
import sys, time
from longvila.locks import DirLock
lock = DirLock(sys.argv[1], description="crash test holder").acquire()
print("HELD", flush=True)
time.sleep(600)
"""


def _holder_process(directory):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.stdout.readline().strip() == "HELD"
    return p


def test_second_writer_fails_fast_naming_the_holder(tmp_path):
    p = _holder_process(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(LockHeld, match=rf"pid {p.pid} on host .*crash test holder.*last heartbeat"):
            DirLock(tmp_path).acquire()
        assert time.monotonic() - t0 < 2
    finally:
        p.kill()
        p.wait()


def test_crashed_holder_does_not_block_the_next_writer(tmp_path):
    p = _holder_process(tmp_path)
    os.kill(p.pid, signal.SIGKILL)  # no release, no cleanup: the kernel drops the flock
    p.wait()
    with DirLock(tmp_path, description="after the crash") as lock:
        held = json.loads((tmp_path / ".lock").read_text())
        assert held["pid"] == os.getpid() and held["description"] == "after the crash"
        lock.check()


def test_waiting_writer_gets_the_lock_when_released(tmp_path):
    first = DirLock(tmp_path, ttl=0.3).acquire()
    threading.Timer(0.8, first.release).start()
    t0 = time.monotonic()
    with DirLock(tmp_path, timeout=20, poll=0.1):
        assert 0.5 < time.monotonic() - t0 < 15
    with pytest.raises(LockHeld):
        with DirLock(tmp_path):
            DirLock(tmp_path, timeout=0.3, poll=0.1).acquire()


@pytest.fixture()
def bucket(moto_endpoint, monkeypatch):
    monkeypatch.setenv("LONGVILA_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    from longvila.io import get_fs

    fs, _ = get_fs("s3://locks-bucket")
    if not fs.exists("locks-bucket"):
        fs.mkdir("locks-bucket")
    yield fs
    fs.invalidate_cache()
    fs.rm("locks-bucket", recursive=True)


@pytest.mark.s3
def test_s3_lease_one_writer_stale_takeover_and_lost_lease(bucket):
    url = "s3://locks-bucket/checkpoints/stage5"
    first = DirLock(url, ttl=60, description="first").acquire()
    with pytest.raises(LockHeld, match=r"pid \d+ on host .*\(first\)"):
        DirLock(url).acquire()
    # the holder "crashes": its heartbeat stops and the lease ages past the ttl
    first._stop.set()
    first._thread.join()
    stale = json.loads(bucket.cat_file(f"locks-bucket/checkpoints/stage5/{LEASE_NAME}"))
    stale["heartbeat"] -= 120
    stale["host"] = "another-host"  # liveness of a pid is only judged on its own host
    bucket.pipe_file(f"locks-bucket/checkpoints/stage5/{LEASE_NAME}", json.dumps(stale).encode())
    second = DirLock(url, ttl=60, description="second").acquire()
    # the old holder learns at its next renewal that it lost the lease, and must not write any more
    first._stop.clear()
    first.ttl = 0.3
    t = threading.Thread(target=first._heartbeat)
    t.start()
    time.sleep(0.5)
    first._stop.set()
    t.join()
    with pytest.raises(LockLost):
        first.check()
    first.release()  # does not delete the new holder's lease
    with pytest.raises(LockHeld, match=r"\(second\)"):
        DirLock(url).acquire()
    second.release()
    with DirLock(url, description="third"):
        pass
