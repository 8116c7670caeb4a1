import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from curation.clipfiles import keyframe_times, write_clip_file, write_clip_set
from curation.clips import Clip
from curation.frames import decode_frames_at
from curation.probe import probe_video
from longvila.errors import VideoError


def _frame(path, n):
    return next(f.to_ndarray(format="gray").astype(int) for _, _, f in decode_frames_at(str(path), [n]))


def test_copy_when_clip_spans_keyframes(gop_video, tmp_path, leftovers):
    path, cuts = gop_video  # keyframes every 25 frames, cuts at 50 and 125, 175 frames
    assert keyframe_times(str(path))[:3] == pytest.approx([0.0, 1.0, 2.0])
    clip = Clip(index=3, shot_index=1, start_frame=50, end_frame=125, start_s=2.0, end_s=5.0)
    dst = tmp_path / "out dir" / "00003.mp4"
    rep = write_clip_file(str(path), clip, str(dst))
    assert rep["mode"] == "copy" and rep["frames"] == 75
    p = probe_video(str(dst))
    assert p.frame_count == 75 and p.duration_s == pytest.approx(3.0) and p.has_audio
    # same pictures: the clip's first frame is the source's frame 50 (lossless copy)
    assert np.array_equal(_frame(dst, 0), _frame(path, 50))
    assert leftovers(tmp_path) == []


def test_reencode_when_clip_starts_between_keyframes(gop_video, tmp_path, leftovers):
    path, _ = gop_video
    # inside the first shot (testsrc2: moving, so neighbouring frames differ)
    clip = Clip(index=0, shot_index=0, start_frame=10, end_frame=47, start_s=0.4, end_s=1.88)
    dst = tmp_path / "00000.mp4"
    rep = write_clip_file(str(path), clip, str(dst))
    assert rep["mode"] == "reencode"
    p = probe_video(str(dst))
    assert p.frame_count == 37 and p.duration_s == pytest.approx(1.48)
    # frame-accurate start: the first frame matches source frame 10 better than its neighbours
    first = _frame(dst, 0)
    err = {n: np.abs(first - _frame(path, n)).mean() for n in (9, 10, 11)}
    assert err[10] < 3.0 and err[10] < err[9] and err[10] < err[11], err
    assert leftovers(tmp_path) == []


def test_end_on_non_keyframe_forces_reencode(gop_video, tmp_path):
    path, _ = gop_video
    clip = Clip(index=0, shot_index=0, start_frame=0, end_frame=40, start_s=0.0, end_s=1.6)
    rep = write_clip_file(str(path), clip, str(tmp_path / "a.mp4"), keyframes=keyframe_times(str(path)))
    assert rep["mode"] == "reencode" and probe_video(str(tmp_path / "a.mp4")).frame_count == 40


def test_bad_clip_and_bad_source(gop_video, bad_inputs, tmp_path, leftovers):
    path, _ = gop_video
    with pytest.raises(VideoError, match="outside"):
        write_clip_file(str(path), Clip(0, 0, 170, 400, 6.8, 16.0), str(tmp_path / "x.mp4"))
    root, expect = bad_inputs
    for name, verdict in expect.items():
        if verdict == "error":
            with pytest.raises(VideoError) as ei:
                write_clip_file(str(root / name), Clip(0, 0, 0, 10, 0.0, 0.4), str(tmp_path / "y.mp4"))
            assert name in str(ei.value)
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "y.mp4").exists()
    assert leftovers(tmp_path) == []


def test_odd_names_are_passed_safely(bad_inputs, tmp_path):
    root, _ = bad_inputs
    src = root / "$(touch pwned).mp4"
    dst = tmp_path / "quote's $(x) \"clip\".mp4"
    rep = write_clip_file(str(src), Clip(0, 0, 0, 30, 0.0, 1.2), str(dst))
    assert dst.exists() and rep["frames"] == 30
    assert not (tmp_path / "pwned").exists() and not (root / "pwned").exists()


@pytest.mark.s3
def test_write_clip_file_to_s3(gop_video, monkeypatch, moto_endpoint):
    """A remote destination gets one whole upload (moto's S3 server on loopback)."""
    monkeypatch.setenv("LONGVILA_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    from longvila.io import get_fs

    fs, _ = get_fs("s3://clips-bucket")
    fs.mkdir("clips-bucket")
    path, _ = gop_video
    dst = "s3://clips-bucket/lake/clip_files/k/00001.mp4"
    rep = write_clip_file(str(path), Clip(1, 1, 50, 125, 2.0, 5.0), dst)
    assert rep["mode"] == "copy" and rep["dst"] == dst
    fs.invalidate_cache()
    assert fs.info("clips-bucket/lake/clip_files/k/00001.mp4")["size"] == rep["bytes"]
    assert fs.ls("clips-bucket/lake/clip_files/k") == ["clips-bucket/lake/clip_files/k/00001.mp4"]


def test_mpeg_ts_source_with_start_offset(gop_video, tmp_path):
    """MPEG-TS starts at ~1.4 s and has no index: both modes must still cut at the exact frame."""
    from curation.video import run_ffmpeg

    path, _ = gop_video
    ts = tmp_path / "src.ts"
    run_ffmpeg("-i", str(path), "-c", "copy", str(ts))
    for clip, mode in [(Clip(0, 0, 10, 47, 0.4, 1.88), "reencode"), (Clip(1, 1, 50, 125, 2.0, 5.0), "copy")]:
        dst = tmp_path / f"{clip.index}.mp4"
        rep = write_clip_file(str(ts), clip, str(dst))
        assert rep["mode"] == mode
        assert probe_video(str(dst)).frame_count == clip.num_frames
        first = _frame(dst, 0)
        err = {n: np.abs(first - _frame(ts, n)).mean() for n in (clip.start_frame - 1, clip.start_frame,
                                                               clip.start_frame + 1)}
        assert min(err, key=err.get) == clip.start_frame and err[clip.start_frame] < 3.0, (mode, err)


def test_failed_clip_set_keeps_the_previous_good_set(gop_video, tmp_path, leftovers):
    path, _ = gop_video
    root = tmp_path / "clip_files" / "k"
    good = [Clip(0, 0, 0, 50, 0.0, 2.0), Clip(1, 1, 50, 125, 2.0, 5.0)]
    index, sha = write_clip_set(str(path), good, str(root), index_extra={"partition": "k"})
    files = {r["clip_index"]: Path(r["url"]) for r in index["clips"]}
    assert index["partition"] == "k" and sorted(files) == [0, 1] and all(f.is_file() for f in files.values())
    committed = (root / "index.json").read_bytes()
    assert hashlib.sha256(committed).hexdigest() == sha
    before = {i: f.read_bytes() for i, f in files.items()}
    # a re-run that fails on its second clip, after its first clip was written
    with pytest.raises(VideoError, match="outside"):
        write_clip_set(str(path), [good[0], Clip(1, 1, 170, 400, 6.8, 16.0)], str(root))
    assert (root / "index.json").read_bytes() == committed
    assert {i: f.read_bytes() for i, f in files.items()} == before
    assert sorted(p.name for p in root.iterdir()) == sorted(["index.json", index["version"]])
    # a successful re-run commits a new set and removes the old one
    index2, _ = write_clip_set(str(path), good[:1], str(root))
    assert sorted(p.name for p in root.iterdir()) == sorted(["index.json", index2["version"]])
    assert leftovers(tmp_path) == []


def test_clip_set_never_removes_a_newer_concurrent_set(gop_video, tmp_path):
    path, _ = gop_video
    root = tmp_path / "k"
    clip = [Clip(0, 0, 0, 50, 0.0, 2.0)]
    newer = "v99999999999999999999-0123abcd"  # started after us, still writing
    (root / newer).mkdir(parents=True)
    index, _ = write_clip_set(str(path), clip, str(root))
    assert (root / newer).is_dir() and (root / index["version"]).is_dir()
    # once the newer set is committed, an older writer discards its own set instead of committing it
    (root / "index.json").write_text(json.dumps({"version": newer, "clips": []}))
    late, _ = write_clip_set(str(path), clip, str(root))
    assert late["version"] == newer and json.loads((root / "index.json").read_text())["version"] == newer
    assert sorted(p.name for p in root.iterdir()) == sorted(["index.json", newer, index["version"]])
