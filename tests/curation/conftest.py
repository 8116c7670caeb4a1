"""Shared fixtures for the curation media tests: small synthetic videos made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.synth import SOURCES, make_bad_inputs, make_sample_corpus, make_synthetic_video
from curation.video import run_ffmpeg as ffmpeg


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in Path(root).rglob(".*") if "tmp" in p.name or p.name.startswith((".upload-", ".clip-"))]


@pytest.fixture
def leftovers():
    """Function listing temporary files (hidden names with 'tmp', '.upload-', '.clip-') under a folder."""
    return _leftovers


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("corpus")
    return d, make_sample_corpus(str(d))


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("bad inputs")  # a space in the folder name too
    return d, make_bad_inputs(str(d))


@pytest.fixture(scope="session")
def gop_video(tmp_path_factory) -> tuple[Path, list[int]]:
    """320x180 @ 25 fps, 3 shots, fixed GOP of 25 frames (keyframes at 0, 25, 50, ...), with audio."""
    d = tmp_path_factory.mktemp("gop")
    p = d / "gop.mp4"
    cuts = make_synthetic_video(str(p), [(2.0, SOURCES[0]), (3.0, SOURCES[1]), (2.0, SOURCES[4])], fps=25,
                                size=(320, 180), audio=True, gop=25)
    return p, cuts


@pytest.fixture(scope="session")
def vfr_video(tmp_path_factory) -> tuple[Path, int, float]:
    """Variable frame rate: 50 frames at 25 fps then 30 frames at 10 fps (80 frames, 5.0 s)."""
    d = tmp_path_factory.mktemp("vfr")
    src = d / "cfr.mp4"
    make_synthetic_video(str(src), [(2.0, SOURCES[0]), (1.2, SOURCES[2])], fps=25, size=(160, 96))
    out = d / "vfr.mp4"
    ffmpeg("-i", str(src), "-vf", "setpts='if(lt(N,50),N/25,2+(N-50)/10)/TB'", "-fps_mode", "vfr",
           "-c:v", "libx264", "-preset", "veryfast", str(out))
    return out, 80, 5.0
