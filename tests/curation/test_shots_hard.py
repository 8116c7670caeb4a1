"""The default detector on hard material with ground truth by construction (curation.synth_hard): flashes,
pans, zooms, fractal zooms, a motion onset, look-alike shots; dissolves, fades through black and white,
wipes. Small videos (192x108, a few seconds each) so the whole file runs in well under a minute."""

from __future__ import annotations

import time

import numpy as np
import pytest

from curation.clips import make_clips
from curation.shots import detect_shots
from curation.synth_hard import (Flash, Join, Transition, fractal, make_mosaic, match_boundaries, pan, pattern,
                                 plan_frames, render_video, zoom)

SIZE = (192, 108)


@pytest.fixture(scope="session")
def hard_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("hard shots")
    mosaic = make_mosaic(str(d / "mosaic.png"), SIZE, pool="tune", seed=4)
    motion = [pan(60, SIZE, 0.1, 0.2, 0.6, 0.3, flashes=(Flash(20, 1, "white", 1.0), Flash(40, 2, "black", 0.9))),
              fractal(55, (-0.7453, 0.1127), 0.3, 0.6, flashes=(Flash(25, 3, "0xFFE0A0", 0.7),)),
              zoom(50, SIZE, 0.5, 0.5, 1.0, 1.8),
              pan(60, SIZE, 0.9, 0.9, 0.2, 0.5, label="lookalike-fastpan", flashes=(Flash(30, 4, "white", 0.6),)),
              pan(70, SIZE, 0.3, 0.8, 0.8, 0.3, hold=30, label="holdpan"),
              pattern(45, "testsrc2=s={s}:r={r}", flashes=(Flash(20, 2, "white", 0.85),)),
              pattern(45, "testsrc2=s={s}:r={r}", "hue=h=40", label="lookalike-pattern")]
    gradual = [pattern(70, "smptebars=s={s}:r={r}"), pan(70, SIZE, 0.2, 0.2, 0.3, 0.25),
               pattern(70, "rgbtestsrc=s={s}:r={r}"), pan(70, SIZE, 0.7, 0.1, 0.6, 0.2),
               pattern(70, "testsrc2=s={s}:r={r}"), pattern(70, "colorchart=r={r},scale={s}"),
               pan(70, SIZE, 0.5, 0.9, 0.55, 0.8), pattern(70, "pal75bars=s={s}:r={r}")]
    joins = [Join("fade", 15), Join("fadeblack", 20), Join("wipeleft", 15), Join("fadewhite", 20), Join(),
             Join("dissolve", 20), Join("circleopen", 15)]
    out = {}
    for name, shots, js in [("motion", motion, [Join()] * (len(motion) - 1)), ("gradual", gradual, joins)]:
        out[name] = (str(d / f"{name}.mp4"), render_video(str(d / f"{name}.mp4"), shots, js, fps=25, size=SIZE,
                                                          mosaic=mosaic))
    return out


def test_ground_truth_by_construction(hard_videos):
    path, truth = hard_videos["gradual"]
    assert truth.frame_count == 8 * 70 - (15 + 20 + 15 + 20 + 20 + 15)
    fade = truth.transitions[1]
    assert (fade.kind, fade.effect, fade.end - fade.start) == ("fade", "fadeblack", 20)
    from curation.video import frame_index

    assert frame_index(path).count == truth.frame_count
    _, begin, total = plan_frames([pattern(10, "x"), pattern(10, "y"), pattern(10, "z")], [Join("fade", 4), Join()])
    assert begin == [0, 6, 16] and total == 26


def test_matcher_rules():
    truth = [Transition("cut", "cut", 50, 50), Transition("dissolve", "fade", 100, 120)]
    assert match_boundaries([52, 110], truth)["f1"] == 1.0
    r = match_boundaries([53, 98, 110], truth)  # 53 is 3 frames off; 98 is within 2 of the span, 110 inside too
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1)
    assert match_boundaries([98], truth)["tp"] == 1 and match_boundaries([123], truth)["tp"] == 0
    assert match_boundaries([], [])["f1"] == 1.0 and match_boundaries([5], [])["precision"] == 0.0


def test_flashes_pans_zooms_lookalikes(hard_videos):
    """Every cut found within 2 frames (look-alike ones included), no boundary at a flash, in a pan, a zoom,
    a fractal zoom or at a motion onset."""
    path, truth = hard_videos["motion"]
    shots = detect_shots(path)
    r = match_boundaries([s.start_frame for s in shots[1:]], truth.transitions)
    assert r["fp"] == 0 and r["fn"] == 0, (r["missed"], r["false"])
    assert all(s.transition_kind == "cut" for s in shots[1:])


def test_dissolves_fades_wipes_and_clean_clips(hard_videos):
    path, truth = hard_videos["gradual"]
    shots = detect_shots(path)
    r = match_boundaries([s.start_frame for s in shots[1:]], truth.transitions)
    assert r["fp"] == 0 and r["fn"] == 0, (r["missed"], r["false"])
    by_truth = {t: min(shots[1:], key=lambda s: abs(s.start_frame - (t.start + t.end) / 2)) for t in truth.transitions}
    for t, s in by_truth.items():
        if t.kind == "cut":
            assert s.transition_kind == "cut"
        else:
            assert s.transition_kind in ("dissolve", "wipe", "fade"), (t, s)
        if t.kind == "fade":
            assert s.transition_kind == "fade", (t, s)
    # no clip contains a frame that mixes two shots (xfade's frames start+1 .. end-1)
    mixed = {f for t in truth.transitions for f in range(t.start + 1, t.end)}
    clips = make_clips(shots, 25.0, max_clip_s=1.0, min_clip_s=0.2)
    assert clips and not any(f in mixed for c in clips for f in range(c.start_frame, c.end_frame))


def test_deadline_kills_ffmpeg_and_names_the_file(hard_videos):
    from curation.shots.decode import iter_frames
    from curation.video import Deadline, MediaTimeout

    path, _ = hard_videos["motion"]
    t = time.monotonic()
    with pytest.raises(MediaTimeout, match="shot detection ran past its time budget") as ei:
        detect_shots(path, timeout_s=0.0)
    assert path in str(ei.value)
    with pytest.raises(MediaTimeout, match="decoding ran past") as ei:  # ffmpeg itself is killed mid-stream
        for _chunk in iter_frames(path, chunk=1, deadline=Deadline(0.05, path, "decoding")):
            time.sleep(0.02)
    assert time.monotonic() - t < 5


@pytest.mark.slow
def test_transnet_batched_equals_reference_and_verifier(hard_videos):
    """Our batched windows give TransNetV2's own sequential predictions; the verifier, run only on a window
    around each boundary, keeps the true cut and drops a boundary where nothing happens."""
    import torch

    from curation.shots import Boundary, _verify
    from curation.shots.decode import iter_frames
    from curation.shots.transnet import load_model, predict

    path, truth = hard_videos["motion"]
    frames = np.concatenate(list(iter_frames(path, skip_loop_filter=False)))[:120]  # shots 0-1, cut at 60
    ours = predict(frames, device="cpu")
    ref, _ = load_model("cpu").predict_frames(torch.from_numpy(frames.copy()), quiet=True)
    assert np.allclose(ours, ref.numpy(), atol=1e-4)
    kept = _verify(frames, [Boundary(60), Boundary(30)], threshold=0.1, device="cpu")
    assert [b.frame for b in kept] == [60]
    # the fast detector's own 48x28 I420 frames, converted around the boundaries only, give the same verdicts
    i420 = np.concatenate(list(iter_frames(path, width=48, height=28, pix_fmt="yuv420p", scaler="area")))[:120]
    kept = _verify(i420, [Boundary(60), Boundary(30)], threshold=0.1, device="cpu")
    assert [b.frame for b in kept] == [60]


@pytest.fixture(scope="module")
def slow_video(tmp_path_factory):
    """Slow blends and wipes (1.2-1.6 s) between moving shots (a slow pan, a moving pattern, a zoom), a flash
    3 frames after a transition, and a moving gradient (a picture that changes smoothly all the time)."""
    d = tmp_path_factory.mktemp("slow shots")
    mosaic = make_mosaic(str(d / "mosaic.png"), SIZE, pool="tune", seed=5)
    shots = [pan(120, SIZE, 0.1, 0.1, 0.25, 0.15),
             pattern(90, "testsrc2=s={s}:r={r}", flashes=(Flash(38, 2, "white", 0.9),)),
             zoom(90, SIZE, 0.3, 0.6, 1.0, 1.6), pan(90, SIZE, 0.8, 0.6, 0.65, 0.7),
             pattern(90, "rgbtestsrc=s={s}:r={r}"),
             pattern(150, "gradients=s={s}:r={r}:c0=0x10A040:c1=0xF0E060:speed=0.02")]
    joins = [Join("fadeslow", 35), Join("smoothdown", 30), Join("dissolve", 40), Join("wipetl", 30), Join()]
    path = str(d / "slow.mp4")
    return path, render_video(path, shots, joins, fps=25, size=SIZE, mosaic=mosaic)


def test_slow_transitions_between_moving_shots(slow_video):
    path, truth = slow_video
    shots = detect_shots(path)
    r = match_boundaries([s.start_frame for s in shots[1:]], truth.transitions)
    assert r["fp"] == 0 and r["fn"] == 0, (r["missed"], r["false"])
