"""Cut shots into clips for captioning (the LongVILA pipeline captions ~10 s clips).

Rules (``make_clips``):

* a clip never crosses a shot boundary and never contains a transition frame: a shot's usable frames are
  ``[shot.transition_end_frame, next_shot.transition_start_frame)`` (the whole shot after a hard cut;
  dissolves, fades and wipes are left out), and the rules below apply to that usable part;
* a shot longer than ``max_clip_s`` is cut into the smallest number ``k`` of near-equal pieces (frame
  counts differ by at most one) that are each ``<= max_clip_s``;
* a piece shorter than ``min_clip_s`` is merged into a neighbour *within the same shot* (previous one
  first, then next) when the merged clip stays ``<= max_clip_s``; otherwise it is dropped;
* a shot whose usable part is shorter than ``min_clip_s`` is dropped.

Lengths are measured in frames: ``max_frames = floor(max_clip_s * fps)``, ``min_frames =
ceil(min_clip_s * fps)``, so every clip satisfies ``min_frames <= end_frame - start_frame <=
max_frames``. Times are interpolated inside the shot: ``start_s = shot.start_s + (start_frame -
shot.start_frame) / fps`` (exact for constant-rate video; the shot's own times — its start and end and
the ends of the transitions — are kept where a clip starts or ends on them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .shots import FrameSpan, Shot

CODE_VERSION = "clips-v2"


@dataclass
class Clip(FrameSpan):
    """Frames ``[start_frame, end_frame)`` of shot ``shot_index``; ``index`` numbers clips in the video."""

    index: int
    shot_index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float


def code_version(max_clip_s: float = 10.0, min_clip_s: float = 1.0) -> str:
    return f"{CODE_VERSION}:max={max_clip_s},min={min_clip_s}"


def _split(start: int, end: int, max_frames: int) -> list[tuple[int, int]]:
    n = end - start
    k = max(1, math.ceil(n / max_frames))
    bounds = [start + (i * n) // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _merge_short(pieces: list[tuple[int, int]], min_frames: int, max_frames: int) -> list[tuple[int, int]]:
    out = list(pieces)
    i = 0
    while i < len(out):
        a, b = out[i]
        if b - a >= min_frames:
            i += 1
            continue
        if i > 0 and b - out[i - 1][0] <= max_frames:  # merge into previous
            out[i - 1] = (out[i - 1][0], b)
            del out[i]
            continue  # the previous piece was long enough already; re-check position i
        if i + 1 < len(out) and out[i + 1][1] - a <= max_frames:  # merge into next
            out[i + 1] = (a, out[i + 1][1])
            del out[i]
            continue  # re-check the merged piece at position i
        del out[i]  # cannot merge without exceeding max: drop
    return out


def make_clips(shots: list[Shot], fps: float, max_clip_s: float = 10.0, min_clip_s: float = 1.0) -> list[Clip]:
    """Clips of every shot per the module rules, numbered 0.. in time order."""
    if not fps or fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if max_clip_s <= 0 or min_clip_s < 0 or min_clip_s > max_clip_s:
        raise ValueError(f"need 0 <= min_clip_s <= max_clip_s and max_clip_s > 0 (got {min_clip_s}, {max_clip_s})")
    max_frames = max(1, math.floor(max_clip_s * fps + 1e-9))
    min_frames = max(1, math.ceil(min_clip_s * fps - 1e-9))
    if min_frames > max_frames:
        raise ValueError(f"min_clip_s={min_clip_s} and max_clip_s={max_clip_s} leave no valid clip length "
                         f"at {fps} fps")
    clips: list[Clip] = []
    for k, shot in enumerate(shots):
        nxt = shots[k + 1] if k + 1 < len(shots) else None
        lo, hi = usable_frames(shot, nxt)
        if hi - lo < min_frames:
            continue
        anchors = _known_times(shot, nxt)
        for a, b in _merge_short(_split(lo, hi, max_frames), min_frames, max_frames):
            t0 = anchors.get(a, shot.start_s + (a - shot.start_frame) / fps)
            t1 = anchors.get(b, shot.start_s + (b - shot.start_frame) / fps)
            clips.append(Clip(index=len(clips), shot_index=shot.index, start_frame=a, end_frame=b,
                              start_s=round(t0, 6), end_s=round(t1, 6)))
    return clips


def usable_frames(shot: Shot, next_shot: Shot | None) -> tuple[int, int]:
    """The frames of `shot` that belong to it alone: after its incoming transition, before the next one."""
    lo = max(shot.start_frame, shot.transition_end_frame)
    hi = shot.end_frame if next_shot is None else min(shot.end_frame, next_shot.transition_start_frame)
    return lo, max(lo, hi)


def _known_times(shot: Shot, next_shot: Shot | None) -> dict[int, float]:
    t = {shot.start_frame: shot.start_s, shot.end_frame: shot.end_s,
         shot.transition_end_frame: shot.transition_end_s}
    if next_shot is not None:
        t[next_shot.transition_start_frame] = next_shot.transition_start_s
    return t
