"""The ``fast`` detector's decode path (48x28 I420 through a reader thread) and its gradual-transition cues
(motion-compensated concentration, blend fit), on arrays and on small generated videos."""

from __future__ import annotations

import subprocess
import threading

import numpy as np
import pytest

from curation.shots import cascade, decode
from curation.shots.cascade import Params, analyze, prepare
from curation.synth import make_synthetic_video


@pytest.fixture(scope="module")
def small_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("i420") / "two shots.mp4"
    make_synthetic_video(str(path), [(1.2, "testsrc2=s={s}:r={r}"), (1.2, "smptebars=s={s}:r={r}")], fps=25,
                         size=(320, 180))
    return str(path)


def test_i420_decode_converts_like_ffmpeg(small_video):
    """48x28 I420 frames, split into planes and converted here, match ffmpeg's own RGB conversion; the
    verifier's 48x27 RGB (`rgb_frames`) is close to ffmpeg's 48x27 RGB decode."""
    i420 = np.concatenate(list(decode.iter_frames(small_video, width=48, height=28, pix_fmt="yuv420p",
                                                  scaler="area")))
    assert i420.shape == (60, 42, 48) and i420.dtype == np.uint8
    y, u, v = decode.split_i420(i420)
    assert y.shape == (60, 28, 48) and u.shape == v.shape == (60, 14, 24)
    # at the chroma planes' resolution (what the cascade uses), our conversion is ffmpeg's
    rgb28 = np.concatenate(list(decode.iter_frames(small_video, width=48, height=28, scaler="area")))
    ours = decode.i420_to_rgb(cascade._halve(y), u, v)
    ref = cascade._halve(np.ascontiguousarray(rgb28.transpose(0, 3, 1, 2)))
    assert ours.shape == ref.shape == (60, 3, 14, 24)
    assert np.abs(ours - ref).mean() < 2.0 and abs(float((ours - ref).mean())) < 1.5
    rgb27 = np.concatenate(list(decode.iter_frames(small_video, width=48, height=27, scaler="area")))
    assert np.abs(decode.rgb_frames(i420).astype(np.float32) - rgb27).mean() < 8.0
    with pytest.raises(ValueError, match="divisible by 4"):
        decode.frame_shape(48, 27, "yuv420p")


def test_consumer_stopping_early_kills_ffmpeg_and_the_reader(small_video, monkeypatch):
    procs = []
    real_popen = subprocess.Popen

    def popen(*a, **kw):
        procs.append(real_popen(*a, **kw))
        return procs[-1]

    monkeypatch.setattr(decode.subprocess, "Popen", popen)
    threads = threading.active_count()
    gen = decode.iter_frames(small_video, chunk=1, queue_chunks=2)
    assert next(gen).shape == (1, 27, 48, 3)
    gen.close()
    assert procs[0].poll() is not None  # ffmpeg was killed, not left blocked on a full pipe
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.daemon:
            t.join(timeout=5)
    assert threading.active_count() <= threads


def _stills(n: int, seed: int, h: int = 14, w: int = 24) -> np.ndarray:
    """Float RGB pictures ``(n, 3, h, w)`` of one random still."""
    rng = np.random.default_rng(seed)
    return np.repeat(rng.uniform(20, 235, (1, 3, h, w)).astype(np.float32), n, axis=0)


def test_blend_fit_accepts_dissolves_and_fades_not_a_moving_gradient():
    a, b, span = _stills(30, 1), _stills(30, 2), 20
    t = np.linspace(0, 1, span)[:, None, None, None]
    dissolve = np.concatenate([a, a[:span] * (1 - t) + b[:span] * t, b])
    dip = np.abs(1 - 2 * t)  # through black: A fades out, B fades in
    fade = np.concatenate([a, np.where(t < 0.5, a[:span] * dip, b[:span] * dip), b])
    p = Params()
    for raw in (dissolve, fade):
        assert cascade._blends(raw, 30 - 4, 30 + span + 3, p)
    # a linear gradient turning steadily: every frame is exactly a blend of any two others, but the change
    # neither starts nor stops: outside the window the frames keep moving along the same line
    yy, xx = np.mgrid[0:14, 0:24].astype(np.float32)
    angles = np.linspace(0, 1.5, 80)
    grad = np.stack([128 + 4 * (xx * np.cos(q) + yy * np.sin(q)) for q in angles])[:, None].repeat(3, axis=1)
    residual, _ = cascade.blend_fit(grad, 30, 50, 30, 50)
    assert residual.max() < 0.05
    assert not cascade._blends(grad, 30, 50, p)


def _panning(n: int, seed: int) -> np.ndarray:
    """uint8 RGB frames ``(n, 28, 48, 3)``: a window panning (1 px every 2 frames) over a large texture of
    random 8x7 blocks."""
    rng = np.random.default_rng(seed)
    big = np.kron(rng.integers(0, 256, (4, 30, 3)).astype(np.float32), np.ones((7, 8, 1), np.float32))
    return np.stack([big[:, i // 2:i // 2 + 48] for i in range(n)]).astype(np.uint8)


def test_wipe_between_two_pans_needs_the_motion_cue():
    """A 20-frame wipe between two panning shots: the plain frame-to-frame change is busy everywhere, so only
    the motion-compensated change (concentrated in the wipe) confirms the candidate. The pan alone gives
    nothing."""
    a, b, span = _panning(100, 1), _panning(100, 2), 20
    wipe = a[60:80].copy()
    for i, c in enumerate(np.minimum(48, (np.arange(1, span + 1) * 48) // span)):
        wipe[i, :, :c] = b[i, :, :c]
    frames = np.concatenate([a[:60], wipe, b[span:]])
    found = analyze(frames, 25.0, Params())
    assert len(found) == 1 and found[0].kind in ("wipe", "dissolve")
    lo, hi = found[0].span()
    assert 60 <= found[0].frame <= 80 and lo <= 61 and hi >= 79
    assert analyze(frames, 25.0, Params(motion_floor=99.0)) == []  # without the motion cue: missed
    assert cascade._motion_concentrated(prepare(frames, 2.0).z, (60, 79), (58, 82), Params())
    assert analyze(_panning(140, 1), 25.0, Params()) == []  # the candidate stage sees nothing in a pan


def test_spans_found_at_two_lags_merge():
    from curation.shots.records import Boundary

    first = [Boundary(100, "dissolve", 90, 110), Boundary(300, "dissolve", 290, 310)]
    merged = cascade._merged(first, Boundary(112, "wipe", 104, 125))
    assert merged == [Boundary(300, "dissolve", 290, 310), Boundary(106, "wipe", 90, 125)]
    assert cascade._merged(first, Boundary(200, "dissolve", 190, 210))[-1] == Boundary(200, "dissolve", 190, 210)
