"""Shared fixtures of the caption tests: smoke models, local backends, a real loopback server."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def smoke_paths(tmp_path_factory):
    from curation.captioning.smoke_models import ensure_smoke_models

    return ensure_smoke_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def vlm(smoke_paths):
    from curation.captioning.local import LocalChatBackend

    return LocalChatBackend(smoke_paths.vlm, batch_size=4, model_id="smoke-vlm", num_threads=1)


@pytest.fixture(scope="session")
def llm(smoke_paths):
    from curation.captioning.local import LocalChatBackend

    return LocalChatBackend(smoke_paths.llm, batch_size=4, model_id="smoke-llm", num_threads=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def fault(self, mode: str = "none", **spec) -> None:
        r = requests.post(f"http://127.0.0.1:{self.port}/admin/fault", json={"mode": mode, **spec}, timeout=5)
        r.raise_for_status()

    def stats(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.port}/admin/stats", timeout=5).json()


@contextlib.contextmanager
def running_server(model_args: list[str], workdir: Path, *extra: str):
    """A real server process (curation.captioning.server) on a free loopback port; yields a Server."""
    port_file = workdir / "port"
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "curation.captioning.server", *model_args, "--port", "0", "--port-file",
         str(port_file), "--batch-size", "4", "--threads", "1", *extra],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(workdir / 'server.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in 120 s")
            time.sleep(0.2)
        srv = Server(proc, int(port_file.read_text()))
        assert requests.get(f"http://127.0.0.1:{srv.port}/health", timeout=5).json() == {"status": "ok"}
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def server(smoke_paths, tmp_path_factory):
    """A real OpenAI-compatible server process (curation.captioning.server) on loopback."""
    models = ["--model", f"smoke-vlm={smoke_paths.vlm}", "--model", f"smoke-llm={smoke_paths.llm}"]
    with running_server(models, tmp_path_factory.mktemp("server"), "--fault-injection") as srv:
        yield srv


@pytest.fixture(scope="session")
def start_server():
    """`running_server(model_args, workdir, *extra_args)`: a server process with its own flags."""
    return running_server


@pytest.fixture
def srv(server):
    """The session server with its fault mode reset before and after the test."""
    server.fault("none")
    yield server
    server.fault("none")


def solid_frames(n: int, colour=(200, 30, 30), size: int = 32) -> list[bytes]:
    import io

    from PIL import Image

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (size, size), tuple((c + 20 * i) % 256 for c in colour)).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return out


@pytest.fixture
def frames():
    return solid_frames


def load_schema(name: str) -> dict:
    return json.loads((REPO / "curation" / "prompts" / f"{name}.v1.schema.json").read_text())


@pytest.fixture
def schema_of():
    return load_schema


@pytest.fixture
def unused_port():
    return free_port()


def curate_layers(storage: str, key: str, path: str, max_clip_s: float, min_clip_s: float):
    """The probe, clips and clip-frame layers of one video (2 frames per clip at 32 px), as the curation assets
    write them; returns the probe."""
    from curation.clips import make_clips
    from curation.frames import sample_clip_frames
    from curation.probe import probe_video
    from curation.schemas import clips_to_table
    from curation.shots import detect_shots
    from longvila import io as lio
    from longvila.layout import layer_path

    probe = probe_video(path)
    clips = make_clips(detect_shots(path), probe.fps, max_clip_s=max_clip_s, min_clip_s=min_clip_s)
    lio.write_json(layer_path(storage, "probe", key), probe.to_dict())
    lio.write_parquet(clips_to_table(clips), layer_path(storage, "clips", key))
    lio.write_parquet(sample_clip_frames(path, clips, frames_per_clip=2, size=32),
                      layer_path(storage, "clip_frames", key))
    return probe
