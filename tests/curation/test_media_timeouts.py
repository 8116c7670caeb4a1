"""Every decode loop and every ffmpeg process runs under a time budget scaled by the video's duration."""

from __future__ import annotations

import os
import time

import pytest

from curation import shots as shots_mod
from curation.clipfiles import write_clip_file
from curation.clips import Clip
from curation.frames import decode_frames_at, sample_video_frames
from curation.probe import probe_video
from curation.shots import detect_shots
from curation.video import Deadline, MediaTimeout, frame_index, run_ffmpeg
from longvila.settings import Timeouts


def test_budget_scales_with_duration_and_is_configurable(monkeypatch):
    monkeypatch.setenv("LONGVILA_MEDIA_TIMEOUT_S", "30")
    monkeypatch.setenv("LONGVILA_MEDIA_TIMEOUT_PER_VIDEO_S", "0.5")
    assert Deadline.for_video("v.mp4", 600.0, "x").budget_s == pytest.approx(330.0)
    assert Deadline.for_video("v.mp4", None, "x").budget_s == pytest.approx(30.0)
    monkeypatch.setenv("LONGVILA_MEDIA_TIMEOUT_S", "-1")
    with pytest.raises(ValueError, match="LONGVILA_MEDIA_TIMEOUT_S"):
        Deadline.for_video("v.mp4", 1.0, "x")
    monkeypatch.setenv("LONGVILA_MEDIA_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="not a number"):
        Deadline.for_video("v.mp4", 1.0, "x")


@pytest.fixture
def no_time(monkeypatch):
    """Budgets that are spent before the first packet."""
    monkeypatch.setattr(Timeouts, "from_env", classmethod(lambda cls: cls(media_s=0.0, media_per_video_s=0.0)))


def test_decode_loops_stop_at_their_deadline(corpus, no_time):
    root, _ = corpus
    path = str(root / "street_cuts.mp4")
    calls = [(probe_video, "probing"), (frame_index, "demuxing"), (sample_video_frames, "demuxing"),
             (detect_shots, "shot detection")]
    for fn, what in calls:
        with pytest.raises(MediaTimeout) as e:
            fn(path)
        assert path in str(e.value) and f"{what} ran past its time budget" in str(e.value), fn


def test_frame_decoding_stops_at_its_deadline(corpus):
    root, _ = corpus
    path = str(root / "street_cuts.mp4")
    idx = frame_index(path)
    with pytest.raises(MediaTimeout, match="frame decoding ran past"):
        list(decode_frames_at(path, range(0, 300, 10), index=idx, deadline=Deadline(0.0, path, "frame decoding")))
    assert len(list(decode_frames_at(path, range(0, 300, 10), index=idx))) == 30  # the default budget suffices


def test_pyscenedetect_is_stopped_at_its_deadline(corpus, monkeypatch):
    class Instant(Deadline):
        @classmethod
        def for_video(cls, path, duration_s, what):
            return cls(0.0 if "PySceneDetect" in what else 60.0, path, what)

    monkeypatch.setattr(shots_mod, "Deadline", Instant)
    root, _ = corpus
    with pytest.raises(MediaTimeout, match="PySceneDetect"):
        detect_shots(str(root / "street_cuts.mp4"), detector="content")


@pytest.fixture
def hung_ffmpeg(tmp_path, monkeypatch):
    """A fake ffmpeg that never finishes (the binary every wrapper finds via IMAGEIO_FFMPEG_EXE)."""
    pid_file = tmp_path / "pid"
    exe = tmp_path / "ffmpeg"
    exe.write_text(f"#!/bin/sh\necho $$ > '{pid_file}'\nexec sleep 60\n")
    exe.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(exe))
    monkeypatch.setenv("LONGVILA_MEDIA_TIMEOUT_S", "1")
    monkeypatch.setenv("LONGVILA_MEDIA_TIMEOUT_PER_VIDEO_S", "0.1")
    return pid_file


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_hung_ffmpeg_is_killed_at_the_deadline(gop_video, tmp_path, hung_ffmpeg, leftovers):
    path, _ = gop_video
    out = tmp_path / "out"
    t0 = time.monotonic()
    # budget: 1 s + 0.1 x (3 s clip + 2 s seek margin)
    with pytest.raises(MediaTimeout, match="cutting clip 3 ran past its time budget of 1.5 s"):
        write_clip_file(str(path), Clip(3, 1, 50, 125, 2.0, 5.0), str(out / "00003.mp4"))
    assert time.monotonic() - t0 < 20
    assert _gone(int(hung_ffmpeg.read_text())) and leftovers(out) == [] and list(out.iterdir()) == []
    with pytest.raises(MediaTimeout, match="ran past its time budget of 1.0 s"):
        run_ffmpeg("-i", str(path), str(tmp_path / "x.mkv"), what="remux")
    assert _gone(int(hung_ffmpeg.read_text()))
