"""The default ``fast`` detector: a cascade of cheap cues over tiny frames, verified where they fire.

Input: frames decoded once at 48x28 I420 (`curation.shots.decode`; 48x27 RGB works too). Per frame
(vectorised over chunks): the picture becomes RGB at 24x14, each channel standardised (mean 0, std 1 with a
floor), so that a global brightness or contrast change (a flash overlay, a fade) changes little; frames whose
luma hardly varies are *blank* (black, white or flat).

1. **Hard cuts.** ``d[t]``, a motion-tolerant difference of frames ``t-1`` and ``t`` (each pixel against
   the 3x3 range around it in the previous frame, so a shift of up to 2 px at 48x27 costs nothing), is
   compared with its medians over ``window`` frames on each side: frame ``t`` is a candidate when ``d[t]``
   exceeds ``cut_ratio`` times the quieter side and ``busy_ratio`` times the busier side (a cut out of a
   fast zoom into a still shot is still a cut; a pan starting is not). Each candidate is then checked
   with a block-matched difference (search +-2 px at 24x13, i.e. +-4 px at 48x27) for a **short burst**:
   if within ``burst_frames`` frames the picture returns to the frame before the candidate (or the frame
   after it matches one shortly before) about as closely as the shot's own motion predicts, the change was
   a flash or a brief insert, not a boundary. Non-maximum suppression keeps one boundary per
   ``min_shot_frames``.
2. **Fades through black or white.** A run of blank frames between two non-blank parts that differ
   (block-matched, like a cut) is a ``fade``; its span extends outwards while the contrast keeps falling
   towards the blank run. A blank run whose two sides match is a flash.
3. **Gradual transitions** (dissolves, wipes): with flash frames replaced by their neighbours, the same
   motion-tolerant difference between frames ``t-k`` and ``t+k`` for lags ``k`` of about 0.24, 0.48 and
   0.8 s is compared with its values at ``t-2k`` and ``t+2k`` (inside the neighbouring shots). A candidate
   is a run where it exceeds ``gradual_ratio`` times the quieter side (*strong*), or ``blend_ratio`` times
   it and at least ``blend_min`` (*weak*: still shots around a faint change), with no cut or fade nearby,
   and the change holds when the reference frames move outwards. Its span is where the frames' progress
   from the frame ``k`` before to the frame ``k`` after (the share of the distance already covered) goes
   from 15% to 85%; the boundary is where it passes 50%. One of three cues must confirm it:

   * *concentrated change* (strong candidates): the plain frame-to-frame change inside the span exceeds
     ``calm_ratio`` times the change just outside (a drifting or panning shot changes at the same pace);
   * *motion-compensated concentration* (strong candidates): the block-matched change over 3 frames, in
     median, is at least ``motion_floor`` inside the span and ``motion_ratio`` times the busier side just
     outside it: a wipe or dissolve between two moving shots, where plain differences are busy everywhere;
   * *blend* (any candidate): every frame between the two references fits ``u * A + v * B + w`` (luma and
     colour separately, least squares over the pixels) within ``blend_residual`` of the references'
     difference, with a progress ``v / (u + v)`` that falls back by at most ``blend_backtrack``: a
     dissolve or fade through any colour, even a slow or faint one.

   Spans found at two lags that overlap become one transition. It is a ``wipe`` when its blocks switch at
   clearly different times, else a ``dissolve``.

Long videos are analysed in overlapping segments (`analyze_stream`), so memory stays bounded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .decode import i420_to_rgb, split_i420
from .records import Boundary

SD_FLOOR = 6.0  # grey levels: below this a channel's standardised values are damped rather than amplified
COLOUR_WEIGHT = 1.0  # a mean shift of 128 grey levels counts as much as a full change of the picture
GRADUAL_LAGS_S = (0.24, 0.48, 0.8)


@dataclass(frozen=True)
class Params:
    """Decision parameters of the cascade (the ``fast`` detector's options, see ``FAST_DEFAULTS``)."""

    cut_ratio: float = 2.5
    busy_ratio: float = 1.5
    cut_min: float = 0.1
    window: int = 12
    burst_frames: int = 6
    burst_slack: float = 1.5
    min_shot_frames: int = 6
    blank_sd: float = 2.0
    gradual: bool = True
    gradual_ratio: float = 5.0
    gradual_min: float = 0.15
    wipe_spread: float = 0.3
    calm_ratio: float = 1.5
    motion_ratio: float = 1.3
    motion_floor: float = 0.04
    blend_residual: float = 0.15
    blend_backtrack: float = 0.3
    blend_ratio: float = 10.0
    blend_min: float = 0.06


# ---------------------------------------------------------------------------------------------
# per-frame features


@dataclass
class Frames:
    """Standardised pictures ``z`` (n, 3, 14, 24) float32 (channels first; 13 rows from 48x27 RGB), luma
    mean and std (n,), and the blank mask (luma std below ``blank_sd``)."""

    z: np.ndarray
    zc: np.ndarray  # z averaged to 12x7: the cheap pictures most cues use
    raw: np.ndarray  # the RGB pictures before standardising, like z: blends are linear in them
    sd: np.ndarray
    mean: np.ndarray
    blank: np.ndarray


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _halve(planes: np.ndarray) -> np.ndarray:
    """2x2 area averages of uint8 ``(n, ..., h, w)`` pictures (float32, ``(n, ..., h/2, w/2)``)."""
    h2, w2 = planes.shape[-2] // 2, planes.shape[-1] // 2
    rows = planes[..., 0:2 * h2:2, :2 * w2].astype(np.uint16)
    rows += planes[..., 1:2 * h2:2, :2 * w2]
    x = (rows[..., 0::2] + rows[..., 1::2]).astype(np.float32)
    x *= 0.25
    return x


def prepare(frames: np.ndarray, blank_sd: float) -> Frames:
    """Features of uint8 frames: RGB ``(n, h, w, 3)`` or I420 ``(n, 3h/2, w)`` (`decode.split_i420`; the
    ``fast`` detector decodes 48x28 I420). Both become RGB at half the luma resolution (24x14 from 48x28)."""
    if frames.ndim == 3:
        y, u, v = split_i420(frames)
        x = i420_to_rgb(_halve(y), u, v)
    else:
        x = _halve(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))  # channels first
    n = len(x)
    raw = x.copy()
    flat = x.reshape(n, 3, -1)
    mean = flat.mean(axis=2)
    sd = np.sqrt(np.maximum(np.einsum("ncp,ncp->nc", flat, flat) / flat.shape[2] - mean * mean, 0.0))
    luma = np.einsum("c,ncp->np", _LUMA, flat)
    lmean = luma.mean(axis=1)
    lsd = np.sqrt(np.maximum(np.einsum("np,np->n", luma, luma) / luma.shape[1] - lmean * lmean, 0.0))
    scale = 1.0 / np.maximum(sd, SD_FLOOR)
    # standardise each channel, but keep some of its level: flat frames of two hues must still differ
    x *= scale[:, :, None, None]
    x += ((COLOUR_WEIGHT / 128.0 - scale) * mean)[:, :, None, None]
    return Frames(z=x, zc=_coarse(x), raw=raw, sd=lsd, mean=lmean, blank=lsd < blank_sd)


def tolerant_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair, the mean amount by which each inner pixel of ``b`` leaves the range of the 3x3 pixels
    around it in ``a`` (0 for shifts of up to 1 px); pictures are (n, 3, h, w)."""
    out = np.empty(len(a), np.float32)
    for i in range(0, len(a), 256):  # chunks keep the temporaries in cache
        out[i:i + 256] = _tolerant_chunk(a[i:i + 256], b[i:i + 256])
    return out


def _tolerant_chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mx = np.maximum(a[:, :, :-2], a[:, :, 1:-1])
    np.maximum(mx, a[:, :, 2:], out=mx)
    mn = np.minimum(a[:, :, :-2], a[:, :, 1:-1])
    np.minimum(mn, a[:, :, 2:], out=mn)
    hi = np.maximum(mx[..., :-2], mx[..., 1:-1])
    np.maximum(hi, mx[..., 2:], out=hi)
    lo = np.minimum(mn[..., :-2], mn[..., 1:-1])
    np.minimum(lo, mn[..., 2:], out=lo)
    inner = b[:, :, 1:-1, 1:-1]
    np.subtract(inner, hi, out=hi)
    np.subtract(lo, inner, out=lo)
    np.maximum(hi, lo, out=hi)  # at most one of the two is positive
    np.maximum(hi, 0, out=hi)
    return hi.reshape(len(a), -1).mean(axis=1)


def matched_diff(a: np.ndarray, b: np.ndarray, radius: int = 2, block: int = 3) -> np.ndarray:
    """Per pair, block-matched mean absolute difference: every ``block`` x ``block`` block of ``b`` (inner
    part, `radius` px from the edges) against its best shift (<= `radius` px) in ``a``; (n, 3, h, w)."""
    n, _, h, w = a.shape
    nby, nbx = (h - 2 * radius) // block, (w - 2 * radius) // block
    bi = b[:, :, radius:radius + nby * block, radius:radius + nbx * block]
    best = None
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            ai = a[:, :, radius + dy:radius + dy + nby * block, radius + dx:radius + dx + nbx * block]
            d = np.abs(bi - ai)
            d = d[:, 0] + d[:, 1] + d[:, 2]  # (n, nby * block, nbx * block)
            rows = sum(d[:, i::block] for i in range(block))
            blocks = sum(rows[:, :, i::block] for i in range(block))
            best = blocks if best is None else np.minimum(best, blocks, out=best)
    return best.reshape(n, -1).mean(axis=1) / (3 * block * block)


def _side_medians(x: np.ndarray, w: int, gap: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Medians of ``x`` over the `w` values ending `gap` before each position, and starting `gap` after it."""
    n = len(x)
    pad = np.concatenate([np.full(w + gap, np.nan), x, np.full(w + gap, np.nan)])
    win = sliding_window_view(pad, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        left = np.nanmedian(win[0:n], axis=1)
        right = np.nanmedian(win[w + 2 * gap:w + 2 * gap + n], axis=1)
    return np.nan_to_num(left, nan=np.inf), np.nan_to_num(right, nan=np.inf)


def _sides(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The quieter and the busier of two baselines per position (an infinite one, past the video's end,
    takes the other's value)."""
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    return np.where(np.isinf(lo), hi, lo), np.where(np.isinf(hi), lo, hi)


# ---------------------------------------------------------------------------------------------
# stage 1: hard cuts with burst suppression


def _burst(f: Frames, b: int, p: Params) -> tuple[int, int] | None:
    """The frames of a flash or brief insert starting or ending at `b` — the picture comes back within
    `burst_frames` frames about as closely as the shot's own motion predicts (block matching, so a pan
    does not hide the return) — or None for a real change. The return is looked for forwards from the
    frame before `b`, then backwards from frame `b`; one block-matching call computes both."""
    n = len(f.z)
    pairs_a, pairs_b, sides = [b - 1], [b], []  # pair 0: the jump
    for ref, sign in ((b - 1, 1), (b, -1)):
        others = [ref + sign * g for g in range(2, p.burst_frames + 2) if 0 <= ref + sign * g < n]
        own = [min(max(2 * ref - o, 0), n - 1) for o in others]  # the same gap inside the own shot
        sides.append((sign, others, len(pairs_a)))
        pairs_a += [ref] * len(others) + own  # the returns, then the shot's own change over the same gaps
        pairs_b += others + [ref] * len(others)
    d = matched_diff(f.z[pairs_a], f.z[pairs_b])
    jump = d[0]
    for sign, others, at in sides:
        k = len(others)
        back, own_change = d[at:at + k], d[at + k:at + 2 * k]
        hit = np.flatnonzero((back < 0.6 * jump) & (back < p.burst_slack * own_change + 0.02 + 0.1 * jump))
        if hit.size:
            other = others[int(hit[0])]
            return (b, other) if sign > 0 else (other + 1, b)
    return None


def hard_cuts(f: Frames, p: Params) -> tuple[list[int], list[tuple[int, int]]]:
    """Cut frames and burst spans ``[first, last+1)`` (flashes and brief inserts)."""
    n = len(f.z)
    d = np.zeros(n, np.float32)
    if n > 1:
        d[1:] = tolerant_diff(f.z[:-1], f.z[1:])
    left, right = _side_medians(d, p.window)
    quiet, busy = _sides(left, right)
    cand = np.flatnonzero((d >= p.cut_ratio * quiet + 0.01) & (d >= p.busy_ratio * busy + 0.01) & (d >= p.cut_min))
    cuts, bursts = [], []
    for b in cand[np.argsort(-d[cand], kind="stable")]:
        if any(abs(b - c) < p.min_shot_frames for c in cuts):
            continue
        span = _burst(f, int(b), p)
        if span is not None:
            bursts.append(span)
            continue
        cuts.append(int(b))
    return sorted(cuts), bursts


# ---------------------------------------------------------------------------------------------
# stage 2: fades through black / white


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    idx = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(idx[::2].tolist(), idx[1::2].tolist()))


def fades(f: Frames, p: Params) -> tuple[list[Boundary], list[tuple[int, int]]]:
    """Fade transitions through black or white frames (reached gradually on at least one side), and such
    blank spans inside one shot (flashes, dips to black: to ignore later)."""
    n = len(f.z)
    out, flashes = [], []
    for u, v in _runs(f.blank):
        if u == 0 or v >= n:
            continue
        lo, hi = u, v  # the fade: contrast falls towards the blank run and rises after it
        while lo > 0 and f.sd[lo - 1] > f.sd[lo] + 0.5 and u - lo < 3 * p.window:
            lo -= 1
        while hi < n - 1 and f.sd[hi + 1] > f.sd[hi] + 0.5 and hi - v < 3 * p.window:
            hi += 1
        dark_or_bright = not 40 <= float(np.median(f.mean[u:v])) <= 215
        if not dark_or_bright or (u - lo < 2 and hi - v < 2):
            continue  # a flat shot (a plain colour) or an abrupt change: for the cut stage
        a, b = max(lo - 1, 0), min(hi, n - 1)
        cross = tolerant_diff(f.z[[a]], f.z[[b]])[0]
        gap = min(b - a, p.burst_frames)  # each side's own change over as many frames (at most a burst)
        own = max(tolerant_diff(f.z[[max(0, a - gap)]], f.z[[a]])[0],
                  tolerant_diff(f.z[[b]], f.z[[min(n - 1, b + gap)]])[0])
        contrast = min(f.sd[a], f.sd[b]) >= 3 * p.blank_sd
        if not contrast or cross < p.busy_ratio * own + 0.05:  # same shot on both sides, or no fade at all
            flashes.append((u, v))
            continue
        out.append(Boundary((u + v) // 2, "fade", lo, hi))
    return out, flashes


# ---------------------------------------------------------------------------------------------
# stage 3: dissolves and wipes


def _repaired(n: int, spans: Iterable[tuple[int, int]]) -> np.ndarray:
    """Index map that replaces frames inside the spans by the last frame before them (outside every span)."""
    idx = np.arange(n)
    for a, b in sorted(spans):
        idx[a:min(b, n)] = idx[max(a - 1, 0)]
    return idx


def _progress(z: np.ndarray, a: int, b: int, plain: bool) -> np.ndarray:
    """Share of the way from frame a to frame b covered by each frame in [a, b]: from motion-tolerant
    differences (robust to motion, but a frame 90% of the way to b already counts as b) or plain ones."""
    mid = z[a:b + 1]
    if plain:
        da = np.abs(mid - z[a]).reshape(len(mid), -1).mean(axis=1)
        db = np.abs(mid - z[b]).reshape(len(mid), -1).mean(axis=1)
    else:
        da = tolerant_diff(np.repeat(z[[a]], len(mid), 0), mid)
        db = tolerant_diff(mid, np.repeat(z[[b]], len(mid), 0))
    return da / np.maximum(da + db, 1e-6)


def _wipe_spread(z: np.ndarray, a: int, b: int, s: int, e: int) -> float:
    """Spread of the times at which 3x6 blocks switch from frame a's picture to frame b's, as a share of the
    span [s, e): large for a wipe (blocks switch one after another), small for a dissolve."""
    mid = z[s:e + 1]
    n = len(mid)
    da = np.abs(mid - z[a]).sum(axis=1)[:, :12].reshape(n, 3, 4, 6, 4).mean(axis=(2, 4)).reshape(n, -1)
    db = np.abs(mid - z[b]).sum(axis=1)[:, :12].reshape(n, 3, 4, 6, 4).mean(axis=(2, 4)).reshape(n, -1)
    informative = (da[0] + db[-1] < 0.5 * (da[-1] + db[0]))
    if informative.sum() < 3:
        return 0.0
    switch = np.argmax(db < da, axis=0)[informative]
    q75, q25 = np.percentile(switch, [75, 25])
    return float((q75 - q25) / max(1, n - 1))


def gradual(f: Frames, p: Params, fps: float, taken: list[tuple[int, int]],
            ignore: list[tuple[int, int]]) -> list[Boundary]:
    """Dissolves and wipes away from the `taken` spans (cuts and fades); `ignore` spans are flashes."""
    n = len(f.z)
    keep = _repaired(n, ignore)
    z, zc, raw = f.z[keep], f.zc[keep], f.raw[keep]
    found: list[Boundary] = []
    step = np.zeros(n, np.float32)  # frame-to-frame change of the coarse pictures
    step[1:] = np.abs(zc[1:] - zc[:-1]).reshape(n - 1, -1).mean(axis=1)
    for k in sorted({max(2, round(s * fps)) for s in GRADUAL_LAGS_S}):
        if n <= 4 * k:
            continue
        w = np.zeros(n, np.float32)
        w[k:n - k] = tolerant_diff(zc[:n - 2 * k], zc[2 * k:])
        left, right = np.full(n, np.inf), np.full(n, np.inf)
        left[2 * k:], right[:n - 2 * k] = w[:n - 2 * k], w[2 * k:]
        left[:3 * k], right[n - 3 * k:] = np.inf, np.inf  # those baselines straddle the video's ends
        quiet, busy = _sides(left, right)
        strong = (w >= p.gradual_ratio * quiet + 0.01) & (w >= p.gradual_min)
        weak = (w >= p.blend_ratio * quiet + 0.01) & (w >= p.blend_min)  # still shots around: only a blend counts
        busy_ok = w >= p.busy_ratio * busy + 0.01
        for lo, hi in _runs(strong | weak):
            c = lo + int(np.argmax(w[lo:hi]))
            a, b = c - k, c + k
            if _near(c, taken, k + 2) or _near(c, [x.span() for x in found], k) or not _persists(zc, a, b, w[c]):
                continue
            x, core = _localise(z, a, b, p)
            if _near(x.frame, taken, 2) or any(x.start <= s <= x.end for s, _ in taken):
                continue  # the localised change is a cut's or a fade's
            cues = strong[lo:hi].any() and (busy_ok[lo:hi].any() and _concentrated(step, core, k, p)
                                             or _motion_concentrated(z, core, x.span(), p))
            if cues or _blends(raw, a, b, p):
                found = _merged(found, x)
    return found


def _near(frame: int, spans: list[tuple[int, int]], reach: int) -> bool:
    return any(s - reach <= frame <= e + reach for s, e in spans)


def _merged(found: list[Boundary], x: Boundary) -> list[Boundary]:
    """`found` with `x` added; spans that overlap (found at different lags) become one transition: the
    union of the spans, the boundary between the two, a wipe if either looked like one."""
    same = [y for y in found if x.start <= y.end + 2 and y.start <= x.end + 2]
    if not same:
        return found + [x]
    y = same[0]
    kind = "wipe" if "wipe" in (x.kind, y.kind) else x.kind
    both = Boundary((x.frame + y.frame) // 2, kind, min(x.start, y.start), max(x.end, y.end))
    return [b for b in found if b is not y] + [both]


_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.299, -0.587, 0.886], [0.701, -0.587, -0.114]], np.float32)


def blend_fit(raw: np.ndarray, a: int, b: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """How well each frame in [lo, hi] is a blend of frames a and b: its luma, and separately its two colour
    differences, fitted as ``u * A + v * B + w`` (least squares over the pixels; a dissolve, a fade through
    black, white or grey, a fade through greys all fit). Returns each frame's mean absolute residual relative
    to the absolute difference of A and B, and its luma progress ``v / (u + v)``."""
    x = np.einsum("ck,nkhw->nchw", _TO_YCC, raw[lo:hi + 1]).reshape(hi - lo + 1, 3, -1)
    res = np.zeros(len(x), np.float32)
    prog = None
    for ch in ((0,), (1, 2)):
        g = x[:, list(ch)].reshape(len(x), -1)
        m = np.stack([g[a - lo], g[b - lo], np.ones_like(g[0])], axis=1)
        coef = g @ np.linalg.pinv(m).T
        res += np.abs(g - coef @ m.T).sum(axis=1)
        if prog is None:
            prog = coef[:, 1] / np.maximum(np.abs(coef[:, 0] + coef[:, 1]), 1e-3)
    cross = np.abs(x[b - lo] - x[a - lo]).sum()
    return res / max(cross, 1e-6), prog


def _blends(raw: np.ndarray, a: int, b: int, p: Params) -> bool:
    """A dissolve or fade: the frames between a and b are blends of the two (`blend_fit`) whose progress
    goes one way (it falls back by at most ``blend_backtrack`` in all), and starts at a and ends at b: the
    frames up to ``(b - a) / 2`` outside stay near progress 0 before and 1 after (within ``blend_backtrack``;
    a smoothly changing picture, such as a moving gradient, keeps changing along the same line outside)."""
    m = (b - a) // 2
    lo, hi = max(0, a - m), min(len(raw) - 1, b + m)
    residual, prog = blend_fit(raw, a, b, lo, hi)
    inside = prog[a - lo:b - lo + 1]
    outside = max(np.abs(prog[:a - lo]).max(initial=0.0), np.abs(prog[b - lo + 1:] - 1).max(initial=0.0))
    return (float(residual[a - lo:b - lo + 1].mean()) <= p.blend_residual and outside <= p.blend_backtrack
            and float(np.maximum(-np.diff(inside), 0).sum()) <= p.blend_backtrack)


def _motion_concentrated(z: np.ndarray, core: tuple[int, int], span: tuple[int, int], p: Params,
                         lag: int = 3, reach: int = 12) -> bool:
    """A wipe or dissolve between moving shots: the block-matched change over `lag` frames (motion
    compensated, so a pan costs little) is, in median, at least ``motion_floor`` inside the core and
    ``motion_ratio`` times its median over up to `reach` frames just outside the span on the busier side."""
    n = len(z)
    s, e = core
    lo, hi = span
    m = max(lag + 4, min(e - s, reach))
    inside = np.arange(max(s + lag, lag), min(e + 1, n))
    if inside.size == 0:
        inside = np.array([min(max(e, lag), n - 1)])
    left = np.arange(max(lag, lo - m), max(lag, lo + 1))
    right = np.arange(min(n, hi + lag), min(n, hi + lag + m))
    idx = np.concatenate([inside, left, right])
    d = matched_diff(z[idx - lag], z[idx])
    din = float(np.median(d[:len(inside)]))
    sides = [float(np.median(x)) for x in (d[len(inside):len(inside) + len(left)], d[len(inside) + len(left):])
             if x.size]
    return din >= p.motion_floor and din >= p.motion_ratio * max(sides, default=0.0) + 0.01


def _concentrated(step: np.ndarray, span: tuple[int, int], k: int, p: Params) -> bool:
    """A transition changes the picture faster than the shots around it do: the mean frame-to-frame change
    (plain, not motion-tolerant) inside the span must exceed `calm_ratio` times the mean over `k` frames on
    each side (a slowly drifting, rotating or panning picture changes at the same pace everywhere)."""
    s, e = span
    inside = step[s + 1:e].mean() if e - s > 1 else step[s:e + 1].max()
    around = np.concatenate([step[max(1, s - k):s], step[e + 1:e + 1 + k]])
    return bool(around.size == 0 or inside >= p.calm_ratio * around.mean())


def _coarse(z: np.ndarray) -> np.ndarray:
    """2x2 averages of float pictures ``(n, c, h, w)``."""
    h2, w2 = z.shape[2] // 2, z.shape[3] // 2
    rows = z[:, :, 0:2 * h2:2, :2 * w2] + z[:, :, 1:2 * h2:2, :2 * w2]
    x = rows[..., 0::2] + rows[..., 1::2]
    x *= 0.25
    return x


def _persists(z: np.ndarray, a: int, b: int, wide: float) -> bool:
    """The change from frame a to frame b must hold when both reference frames move outwards by up to 6
    frames (a flash or brief insert at either end only spoils some of these pairs)."""
    n = len(z)
    js = [j for j in (2, 4, 6) if a - j >= 0 and b + j < n]
    if not js:
        return True
    cross = tolerant_diff(z[[a - j for j in js]], z[[b + j for j in js]])
    return bool(cross.min() >= 0.5 * wide)


def _localise(z: np.ndarray, a: int, b: int, p: Params) -> tuple[Boundary, tuple[int, int]]:
    """The boundary is where the (motion-tolerant) progress from frame a to frame b passes 50%; the core
    span is where it goes from 5% to 95%. The span kept out of clips is the union of the core and the span
    where the plain progress, between reference frames just outside the core, leaves 3% and reaches 97%
    (no mixed frame is left out), widened by a margin and never wider than the window [a, b] around the
    boundary. Returns the boundary and the core span."""
    n = len(z)
    s, mid, e = _span(_progress(z, a, b, plain=False), a, 0.05)
    pad = max(2, (b - a) // 4)
    a2, b2 = max(0, s - pad), min(n - 1, e + pad)
    s2, _, e2 = _span(_progress(z, a2, b2, plain=True), a2, 0.03)
    lo, hi = max(min(s, s2), mid - (b - a)), min(max(e, e2), mid + (b - a))
    kind = "wipe" if _wipe_spread(z, a2, b2, s, max(e, s + 1)) >= p.wipe_spread else "dissolve"
    margin = 2 + (hi - lo) // 8  # the last few % of a wipe or dissolve hide below the 48x27 picture's detail
    return Boundary(mid, kind, max(0, lo - margin), min(n, hi + 1 + margin)), (s, e + 1)


def _span(prog: np.ndarray, a: int, tail: float) -> tuple[int, int, int]:
    """(last frame below `tail`, first frame at 50%, first frame above ``1 - tail``) of a progress curve."""
    m = int(np.argmax(prog >= 0.5))
    before = np.flatnonzero(prog[:m] < tail)
    after = np.flatnonzero(prog[m:] > 1 - tail)
    s = int(before[-1]) if before.size else 0
    e = m + int(after[0]) if after.size else len(prog) - 1
    return a + s, a + m, a + e


# ---------------------------------------------------------------------------------------------
# driver


def analyze(frames: np.ndarray, fps: float, p: Params) -> list[Boundary]:
    """All boundaries of one array of frames (uint8 RGB or I420, see `prepare`), sorted by frame."""
    f = prepare(frames, p.blank_sd)
    cuts, bursts = hard_cuts(f, p)
    fade_bs, blank_flashes = fades(f, p)
    cuts = [c for c in cuts if not any(x.span()[0] - 1 <= c <= x.span()[1] + 1 for x in fade_bs)]
    out = [Boundary(c) for c in cuts] + fade_bs
    if p.gradual:
        taken = [x.span() for x in out]
        out += gradual(f, p, fps, taken, bursts + blank_flashes)
    return sorted(out, key=lambda x: x.frame)


def context_frames(fps: float, p: Params) -> int:
    """Frames of context on each side that every decision looks at (at most)."""
    k = max(2, round(max(GRADUAL_LAGS_S) * fps))
    return max(5 * k, 4 * p.window, 2 * (p.burst_frames + 2)) + 8


def analyze_stream(chunks: Iterator[np.ndarray], fps: float, p: Params, segment: int = 4096,
                   on_frames=None, verify=None) -> tuple[list[Boundary], int]:
    """`analyze` over overlapping segments of a stream of frame chunks; returns (boundaries, frame count).

    Each segment holds at most ``segment + 2 * context`` frames; a boundary is kept by the segment whose
    core (away from the overlap) contains it, so it is decided with full context. ``verify(frames,
    boundaries)``, if given, filters each segment's boundaries (segment-local frame numbers) while its frames
    are still in memory: every core boundary has at least `context_frames` frames on each side.
    """
    ctx = context_frames(fps, p)
    buf: list[np.ndarray] = []
    held, base, total = 0, 0, 0  # frames in buf, frame number of buf[0], frames seen
    out: list[Boundary] = []

    def run(final: bool) -> None:
        nonlocal buf, held, base
        arr = np.concatenate(buf) if len(buf) > 1 else buf[0]
        lo = base + (ctx if base > 0 else 0)
        hi = base + held if final else base + held - ctx
        found = [x for x in analyze(arr, fps, p) if lo <= x.frame + base < hi]
        if verify is not None and found:
            found = verify(arr, found)
        out.extend(Boundary(x.frame + base, x.kind, None if x.start is None else x.start + base,
                            None if x.end is None else x.end + base) for x in found)
        keep = 2 * ctx
        if not final:
            buf, base, held = [arr[held - keep:]], base + held - keep, keep

    for c in chunks:
        buf.append(c)
        held += len(c)
        total += len(c)
        if on_frames is not None:
            on_frames(total)
        if held >= segment + 2 * ctx:
            run(final=False)
    if held:
        run(final=True)
    return out, total
