"""Suite-wide isolation: nothing a test does lands in the checkout's data/ folder by accident."""

import os

import pytest

# Transient-fault retries keep their count but not their 10-s first delay (read when the asset modules load).
os.environ.setdefault("LONGVILA_RETRY_DELAY_S", "0.05")


@pytest.fixture(autouse=True)
def _isolated_download_cache(tmp_path_factory, monkeypatch):
    # raw videos are copied into a content-addressed cache by the curation assets; keep each test's cache private
    monkeypatch.setenv("LONGVILA_CACHE_DIR", str(tmp_path_factory.mktemp("download-cache")))


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """One real S3-protocol server for the whole suite: `moto_server` (moto[server], a test dependency)
    as a separate process on a loopback port. Tests use their own buckets."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    exe = Path(sys.executable).with_name("moto_server")
    assert exe.exists(), f"{exe} missing: install the test extras (pip install -e '.[test]')"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {url}: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
