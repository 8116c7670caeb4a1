"""The default ``fast`` detector: a cascade of cheap cues over 48x27 frames, verified where they fire.

Input: frames decoded once at 48x27 RGB (`curation.shots.decode`). Per frame (vectorised over chunks):
the picture is averaged to 24x13, each RGB channel standardised (mean 0, std 1 with a floor), so that a
global brightness or contrast change (a flash overlay, a fade) changes little; frames whose luma hardly
varies are *blank* (black, white or flat).

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
   0.8 s is compared with its values at ``t-2k`` and ``t+2k`` (inside the neighbouring shots): a ratio
   above ``gradual_ratio`` against the quieter side (and ``busy_ratio`` against the busier side), with no
   cut or fade nearby, is a transition. Its span is where the frames' progress from the frame ``k`` before
   to the frame ``k`` after (the share of the distance already covered) goes from 15% to 85%; the boundary
   is where it passes 50%. It is a ``wipe`` when its blocks switch at clearly different times, else a
   ``dissolve``.

Long videos are analysed in overlapping segments (`analyze_stream`), so memory stays bounded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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


# ---------------------------------------------------------------------------------------------
# per-frame features


@dataclass
class Frames:
    """Standardised 24x13 pictures ``z`` (n, 3, 13, 24) float32 (channels first), luma mean and std (n,),
    and the blank mask (luma std below ``blank_sd``)."""

    z: np.ndarray
    zc: np.ndarray  # z averaged to 12x6: the cheap pictures most cues use
    sd: np.ndarray
    mean: np.ndarray
    blank: np.ndarray


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def prepare(rgb: np.ndarray, blank_sd: float) -> Frames:
    """Features of uint8 frames ``(n, h, w, 3)`` (48x27 from the decoder; any size works)."""
    n, h, w, _ = rgb.shape
    h2, w2 = h // 2, w // 2
    v = rgb[:, :2 * h2, :2 * w2].reshape(n, h2, 2, w2, 2, 3)
    s = v[:, :, 0, :, 0].astype(np.uint16)
    s += v[:, :, 1, :, 0]
    s += v[:, :, 0, :, 1]
    s += v[:, :, 1, :, 1]  # 2x2 sums, (n, h/2, w/2, 3)
    x = np.ascontiguousarray(s.transpose(0, 3, 1, 2), dtype=np.float32)
    x *= 0.25  # 2x2 area average, channels first
    flat = x.reshape(n, 3, -1)
    mean = flat.mean(axis=2)
    sd = np.sqrt(np.maximum(np.einsum("ncp,ncp->nc", flat, flat) / flat.shape[2] - mean * mean, 0.0))
    scale = 1.0 / np.maximum(sd, SD_FLOOR)
    # standardise each channel, but keep some of its level: flat frames of two hues must still differ
    x *= scale[:, :, None, None]
    x += ((COLOUR_WEIGHT / 128.0 - scale) * mean)[:, :, None, None]
    luma = (s.reshape(n, -1, 3) @ (0.25 * _LUMA)).astype(np.float32)  # (n, pixels)
    lmean = luma.mean(axis=1)
    lsd = np.sqrt(np.maximum(np.einsum("np,np->n", luma, luma) / luma.shape[1] - lmean * lmean, 0.0))
    return Frames(z=x, zc=_coarse(x), sd=lsd, mean=lmean, blank=lsd < blank_sd)


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
            d = np.abs(bi - ai).sum(axis=1).reshape(n, nby, block, nbx, block).sum(axis=(2, 4))
            best = d if best is None else np.minimum(best, d)
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


def _ratio_test(x: np.ndarray, left: np.ndarray, right: np.ndarray, ratio: float, busy: float,
                floor: float, eps: float = 0.01) -> np.ndarray:
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    lo = np.where(np.isinf(lo), hi, lo)
    hi = np.where(np.isinf(hi), lo, hi)
    return (x >= ratio * lo + eps) & (x >= busy * hi + eps) & (x >= floor)


# ---------------------------------------------------------------------------------------------
# stage 1: hard cuts with burst suppression


def _burst(f: Frames, b: int, p: Params) -> tuple[int, int] | None:
    """The frames of a flash or brief insert starting or ending at `b` — the picture comes back within
    `burst_frames` frames about as closely as the shot's own motion predicts (block matching, so a pan
    does not hide the return) — or None for a real change."""
    n, z = len(f.z), f.z
    for ref, sign in ((b - 1, 1), (b, -1)):  # forward from the frame before, backward from the frame after
        others = [ref + sign * g for g in range(2, p.burst_frames + 2) if 0 <= ref + sign * g < n]
        if not others:
            continue
        gaps = np.abs(np.array(others) - ref)
        own = [min(max(ref - sign * g, 0), n - 1) for g in gaps]  # same gap inside the reference's own shot
        k = len(others)
        # one call: the jump, the returns, and the shot's own change over the same gaps
        d = matched_diff(z[[b - 1] + [ref] * k + own], z[[b] + others + [ref] * k])
        jump, back, e = d[0], d[1:k + 1], d[k + 1:]
        hit = np.flatnonzero((back < 0.6 * jump) & (back < p.burst_slack * e + 0.02))
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
    cand = np.flatnonzero(_ratio_test(d, left, right, p.cut_ratio, p.busy_ratio, p.cut_min))
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
    z, zc = f.z[keep], f.zc[keep]
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
        hit = _ratio_test(w, left, right, p.gradual_ratio, p.busy_ratio, p.gradual_min)
        for lo, hi in _runs(hit):
            c = lo + int(np.argmax(w[lo:hi]))
            a, b = c - k, c + k
            if any(s - k - 2 <= c <= e + k + 2 for s, e in taken) or any(
                    x.span()[0] - k <= c <= x.span()[1] + k for x in found):
                continue
            if _persists(zc, a, b, w[c]):
                x, core = _localise(z, a, b, p)
                if _concentrated(step, core, k, p):
                    found.append(x)
    return found


def _concentrated(step: np.ndarray, span: tuple[int, int], k: int, p: Params) -> bool:
    """A transition changes the picture faster than the shots around it do: the mean frame-to-frame change
    (plain, not motion-tolerant) inside the span must exceed `calm_ratio` times the mean over `k` frames on
    each side (a slowly drifting, rotating or panning picture changes at the same pace everywhere)."""
    s, e = span
    inside = step[s + 1:e].mean() if e - s > 1 else step[s:e + 1].max()
    around = np.concatenate([step[max(1, s - k):s], step[e + 1:e + 1 + k]])
    return bool(around.size == 0 or inside >= p.calm_ratio * around.mean())


def _coarse(z: np.ndarray) -> np.ndarray:
    n, c, h, w = z.shape
    return z[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


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


def analyze(rgb: np.ndarray, fps: float, p: Params) -> list[Boundary]:
    """All boundaries of one array of frames (uint8 ``(n, h, w, 3)``), sorted by frame."""
    f = prepare(rgb, p.blank_sd)
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
