"""Shot records and how detectors turn boundaries into shots that tile a video.

A `Shot` is frames ``[start_frame, end_frame)`` (end exclusive) with their times, plus the transition
*into* it: ``transition_kind`` (``none`` for the first shot, ``cut``, or a gradual kind: ``dissolve``,
``fade`` = through black or white, ``wipe`` = a moving edge, ``gradual`` = unclassified) and its frames
``[transition_start_frame, transition_end_frame)`` with ``transition_start_frame <= start_frame <=
transition_end_frame``. A cut has an empty span (both ends equal ``start_frame``). Frames inside a span
mix two shots: ``curation.clips`` never puts them in a clip. Older records without the transition fields
read as cuts (``none`` for shot 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TRANSITION_KINDS = ("none", "cut", "dissolve", "fade", "wipe", "gradual")


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
    """One shot: frames ``[start_frame, end_frame)``, their times, and the transition into it."""

    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    transition_kind: str = ""
    transition_start_frame: int | None = None
    transition_end_frame: int | None = None
    transition_start_s: float | None = None
    transition_end_s: float | None = None

    def __post_init__(self) -> None:
        if not self.transition_kind:
            self.transition_kind = "none" if self.index == 0 else "cut"
        if self.transition_kind not in TRANSITION_KINDS:
            raise ValueError(f"unknown transition kind {self.transition_kind!r}; one of {TRANSITION_KINDS}")
        if self.transition_start_frame is None:
            self.transition_start_frame, self.transition_start_s = self.start_frame, self.start_s
        if self.transition_end_frame is None:
            self.transition_end_frame, self.transition_end_s = self.start_frame, self.start_s


@dataclass(frozen=True)
class Boundary:
    """A detected shot change: the new shot starts at `frame`; frames ``[start, end)`` are the transition."""

    frame: int
    kind: str = "cut"
    start: int | None = None
    end: int | None = None

    def span(self) -> tuple[int, int]:
        lo = self.frame if self.start is None else min(self.start, self.frame)
        hi = self.frame if self.end is None else max(self.end, self.frame)
        return lo, hi


def _time_fn(frame_count: int, times, fps, duration_s):
    if times is not None and len(times) >= frame_count:
        t = np.asarray(times[:frame_count], dtype=np.float64)
        if duration_s is None:
            step = float(np.median(np.diff(t))) if frame_count > 1 else (1.0 / fps if fps else 0.0)
            duration_s = float(t[-1]) + step
        return lambda i: round(float(t[i]) if i < frame_count else float(duration_s), 6)
    if not fps:
        raise ValueError("shots need times or fps")
    return lambda i: round(i / fps, 6)


def shots_from_boundaries(boundaries, frame_count: int, times: np.ndarray | None = None,
                          fps: float | None = None, duration_s: float | None = None) -> list[Shot]:
    """Shots tiling ``[0, frame_count)`` from boundaries (`Boundary`, or plain ints for cuts).

    Boundaries outside ``(0, frame_count)`` and duplicates are dropped; spans are clipped to the video and
    to the neighbouring boundaries so that they never overlap.
    """
    if frame_count <= 0:
        return []
    by_frame: dict[int, Boundary] = {}
    for b in boundaries:
        b = b if isinstance(b, Boundary) else Boundary(int(b))
        if 0 < b.frame < frame_count and b.frame not in by_frame:
            by_frame[b.frame] = b
    bs = [by_frame[f] for f in sorted(by_frame)]
    tt = _time_fn(frame_count, times, fps, duration_s)
    starts = [0] + [b.frame for b in bs]
    ends = starts[1:] + [frame_count]
    shots = [Shot(0, 0, ends[0], tt(0), tt(ends[0]))]
    prev_start = 0
    for k, b in enumerate(bs, start=1):
        lo, hi = b.span()
        lo = max(lo, prev_start + 1 if k > 1 else 0, shots[-1].transition_end_frame)
        hi = min(hi, ends[k] - 1 if k < len(bs) else frame_count)
        lo, hi = min(lo, b.frame), max(hi, b.frame)
        shots.append(Shot(k, b.frame, ends[k], tt(b.frame), tt(ends[k]), b.kind, lo, hi, tt(lo), tt(hi)))
        prev_start = b.frame
    return shots


def shots_from_cuts(cuts, frame_count: int, times: np.ndarray | None = None, fps: float | None = None,
                    duration_s: float | None = None) -> list[Shot]:
    """Turn cut frame numbers (first frame of each new shot) into shots tiling [0, frame_count)."""
    return shots_from_boundaries([int(c) for c in cuts], frame_count, times, fps, duration_s)
