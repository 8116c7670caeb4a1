import av
import pytest

from curation.synth import SOURCES, make_synthetic_video, random_shot_list, transnet_test_video


def test_synthetic_video_ground_truth(tmp_path, leftovers):
    p = tmp_path / "v.mp4"
    cuts = make_synthetic_video(str(p), [(1.0, SOURCES[1]), (0.52, SOURCES[2]), (0.8, SOURCES[5])], fps=25,
                                size=(128, 72))
    assert cuts == [25, 38]
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (128, 72)
        assert sum(1 for _ in c.decode(s)) == 58
    assert leftovers(tmp_path) == []


def test_random_shot_list_neighbours_differ():
    shots = random_shot_list(120.0, 20, seed=3)
    assert len(shots) == 20 and sum(d for d, _ in shots) == pytest.approx(120.0)
    assert all(a[1] != b[1] for a, b in zip(shots, shots[1:]))
    assert all(d >= 1.0 for d, _ in shots)
    with pytest.raises(ValueError):
        random_shot_list(5.0, 10)


def test_corpus_and_bad_inputs_catalogues(corpus, bad_inputs):
    root, info = corpus
    assert sum(1 for m in info.values() if m["cuts"] is not None) >= 3
    assert sum(m["duration_s"] for m in info.values() if m["cuts"] is not None) < 120
    assert all((root / name).is_file() for name in info)
    if transnet_test_video():
        assert info["transnetv2_test.mp4"]["cuts"] is None
    broot, expect = bad_inputs
    assert {"zero_bytes.mp4", "truncated.mp4", "not_a_video.mp4", "audio_only.m4a", "audio_only.mp4",
            "no_decodable_frames.mp4", "truncated_faststart.mp4"} <= {k for k, v in expect.items() if v == "error"}
    assert sum(1 for v in expect.values() if v == "ok") == 4
    assert all((broot / name).exists() for name in expect)
