import numpy as np
import pytest

from curation.clips import make_clips
from curation.frames import (CODE_VERSION, decode_frames_at, decode_jpeg_frames, sample_clip_frames,
                             sample_video_frames, uniform_in_clip, video_sample_numbers)
from curation.schemas import CLIP_FRAMES, VIDEO_FRAMES
from curation.shots import detect_shots
from curation.video import frame_index
from longvila.errors import VideoError


def test_uniform_in_clip():
    assert uniform_in_clip(0, 80, 8) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert uniform_in_clip(10, 13, 8) == [10, 11, 12]  # fewer frames than requested: all of them
    assert uniform_in_clip(5, 5, 8) == []


def test_sample_clip_frames_counts_sizes_and_positions(corpus):
    root, _ = corpus
    path = str(root / "street_cuts.mp4")  # 640x360, cuts at 75, 125, 225
    shots = detect_shots(path)
    clips = make_clips(shots, 25.0, max_clip_s=2.5, min_clip_s=1.0)
    table = sample_clip_frames(path, clips, frames_per_clip=4, size=96, jpeg_quality=80)
    assert table.schema.equals(CLIP_FRAMES, check_metadata=False)
    assert table.num_rows == 4 * len(clips)
    d = table.to_pydict()
    for c in clips:
        rows = [i for i, ci in enumerate(d["clip_index"]) if ci == c.index]
        assert [d["frame_index_in_clip"][i] for i in rows] == [0, 1, 2, 3]
        nums = [d["frame_number"][i] for i in rows]
        assert nums == uniform_in_clip(c.start_frame, c.end_frame, 4)
        assert all(c.start_frame <= n < c.end_frame for n in nums)
        assert all(d["pts_s"][i] == pytest.approx(d["frame_number"][i] / 25.0) for i in rows)
    assert set(d["width"]) == {96} and set(d["height"]) == {96}
    imgs = decode_jpeg_frames(table)
    assert len(imgs) == table.num_rows and all(im.size == (96, 96) and im.mode == "RGB" for im in imgs)
    # aspect-preserving pad: 16:9 content -> rows 0..12 and 84..95 are the grey padding
    a = np.asarray(imgs[0]).astype(int)
    assert np.abs(a[:10] - 127).max() <= 6 and np.abs(a[-10:] - 127).max() <= 6
    assert CODE_VERSION == "frames-v1"


def test_sample_clip_frames_crop_mode(corpus):
    root, _ = corpus
    path = str(root / "bars_and_colours.mp4")
    clips = make_clips(detect_shots(path), 25.0)
    table = sample_clip_frames(path, clips[:1], frames_per_clip=2, size=64, resize_mode="crop")
    img = decode_jpeg_frames(table)[0]
    assert img.size == (64, 64)
    # a crop has no grey bands: the top rows carry the picture (the first shot is an RGB test pattern)
    top = np.asarray(img).astype(int)[:4]
    assert np.abs(top - 127).max() > 60
    with pytest.raises(ValueError):
        sample_clip_frames(path, clips[:1], resize_mode="stretch")


@pytest.mark.parametrize("container", ["mp4", "ts", "mkv"])
def test_sampled_frames_match_sequential_decode(gop_video, container, tmp_path):
    """Keyframe-aware seeking returns exactly the frames a full sequential decode sees — also for
    MPEG-TS, whose demuxer has no index and lands after the requested keyframe (re-seeks earlier)."""
    path, _ = gop_video
    if container != "mp4":
        from curation.video import run_ffmpeg

        run_ffmpeg("-i", str(path), "-c", "copy", str(tmp_path / f"v.{container}"))
        path = tmp_path / f"v.{container}"
    idx = frame_index(str(path))
    targets = [3, 30, 31, 99, 160, 174]
    seek = {n: f.to_ndarray(format="gray") for n, _, f in decode_frames_at(str(path), targets, index=idx,
                                                                           min_seek_gap=0)}
    seq = {n: f.to_ndarray(format="gray") for n, _, f in decode_frames_at(str(path), targets, index=idx,
                                                                          seek=False, skip_nonref=False)}
    default = {n: f.to_ndarray(format="gray") for n, _, f in decode_frames_at(str(path), targets, index=idx)}
    assert sorted(seek) == targets == sorted(seq) == sorted(default)
    for n in targets:
        assert np.array_equal(seek[n], seq[n]) and np.array_equal(default[n], seq[n]), n


def test_sample_video_frames_counts(corpus):
    root, _ = corpus
    path = str(root / "long_take.mp4")  # 32 s at 24 fps
    t = sample_video_frames(path, fps=1.0, max_frames=256, size=64)
    assert t.schema.equals(VIDEO_FRAMES, check_metadata=False)
    assert t.num_rows == 32
    assert t.column("frame_number").to_pylist() == [24 * k for k in range(32)]
    t = sample_video_frames(path, fps=2.0, max_frames=16, size=64)
    nums = t.column("frame_number").to_pylist()
    assert len(nums) == 16 and nums == sorted(nums) and nums[0] < 48 and nums[-1] > 768 - 48
    assert np.ptp(np.diff(nums)) <= 1  # uniform
    idx = frame_index(path)
    assert video_sample_numbers(idx, fps=0.5, max_frames=100) == [48 * k for k in range(16)]


def test_clip_outside_video_is_rejected(corpus):
    root, _ = corpus
    path = str(root / "single_shot.mp4")
    from curation.clips import Clip

    with pytest.raises(VideoError, match="outside"):
        sample_clip_frames(path, [Clip(0, 0, 100, 200, 0.0, 1.0)])


def test_bad_inputs(bad_inputs):
    root, expect = bad_inputs
    for name, verdict in expect.items():
        path = str(root / name)
        if verdict == "error":
            with pytest.raises(VideoError) as ei:
                sample_video_frames(path, fps=1.0, size=32)
            assert name in str(ei.value)
        else:
            t = sample_video_frames(path, fps=1.0, size=32)
            assert t.column("frame_number").to_pylist() == [0, 25]
