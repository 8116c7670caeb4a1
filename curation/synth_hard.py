"""Hard synthetic shot-boundary material with ground truth known by construction.

A video is a list of `ShotSpec` joined by `Join`s (a hard cut or an ffmpeg ``xfade`` transition) and
rendered by one call of the bundled ffmpeg binary: every shot is trimmed to an exact frame count, put on
the time base ``1/fps``, and the shots are chained with ``concat`` (cuts) or ``xfade`` (gradual
transitions), so every transition's frames are known exactly (`render_video` returns them).

Shot content that fools simple detectors:

* **pans** and **zooms** (``zoompan``) over one large still "mosaic" made of several lavfi sources
  (`make_mosaic`), slow and fast: pure camera motion, no cut;
* **fractal zooms** (``mandelbrot``): every pixel and the palette keep changing;
* **look-alike shots**: consecutive shots from the same mosaic (another region or another motion) or
  the same pattern with a small change (hue rotation, mirror), so colour histograms hardly move;
* **flashes**: 1-4 frames brightened, darkened or tinted inside a shot (``drawbox``), then the shot goes
  on: not a boundary.

Gradual transitions are ``xfade`` effects; `EFFECT_KIND` maps them onto the transition kinds of
``curation.shots`` (``dissolve``, ``fade`` = through black or white, ``wipe`` = any moving edge).

Not used as moving shot content (they change inside a segment: anchors.md): ``mptestsrc`` (switches
patterns), ``life`` / ``cellauto`` (high-motion cellular automata); single still frames of them do appear
as mosaic tiles.

Two disjoint-ish pools keep tuning and evaluation apart (`POOLS`): ``tune`` (the material the default
detector was tuned on: tests and development) and ``eval`` (what ``bench/shots.py`` scores: other
mosaic tiles, other sources and parameter ranges, and transition effects never seen while tuning).

Ground truth (`Truth.transitions`): ``Transition(kind, effect, start, end)``, frames in presentation
order; a cut has ``start == end`` = first frame of the new shot; a gradual transition spans the blended
frames ``[start, end)`` (``end`` is the first frame showing only the new shot). `match_boundaries`
scores predicted boundaries against it (the matcher documented in bench/results/curation.md).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from .video import run_ffmpeg

EFFECT_KIND = {
    "fade": "dissolve", "dissolve": "dissolve", "fadegrays": "dissolve", "fadefast": "dissolve",
    "fadeslow": "dissolve", "fadeblack": "fade", "fadewhite": "fade",
    **{e: "wipe" for e in ("wipeleft", "wiperight", "wipeup", "wipedown", "wipetl", "wipetr", "wipebl",
                           "wipebr", "slideleft", "slideright", "slideup", "slidedown", "smoothleft",
                           "smoothright", "smoothup", "smoothdown", "circleopen", "circleclose", "vertopen",
                           "horzopen", "diagtl", "diagbr", "coverleft", "coverdown", "revealright",
                           "revealup", "revealleft", "revealdown", "coverup", "rectcrop", "radial", "diagtr",
                           "diagbl")},
}

# interesting points of the Mandelbrot set for fractal zooms (x, y)
_MANDEL_POINTS = [(-0.743643887037, 0.131825904205), (-0.7453, 0.1127), (-1.25066, 0.02012),
                  (-0.1011, 0.9563), (0.001643721971, -0.822467633298), (-0.761574, -0.0847596),
                  (-1.7686, 0.0017), (0.2549870375, 0.0005001215)]

POOLS = {
    "tune": dict(
        tiles=["testsrc2=s={s}:r={r}", "smptebars=s={s}:r={r}", "colorchart=r={r},scale={s}",
               "rgbtestsrc=s={s}:r={r}", "gradients=s={s}:r={r}:c0=0x2050E0:c1=0xF0C040:seed=3",
               "mandelbrot=s={s}:r={r}:maxiter=200:start_scale=0.8", "cellauto=s={s}:r={r}:rule=18:seed=5",
               "testsrc2=s={s}:r={r},hue=h=120", "pal75bars=s={s}:r={r}"],
        patterns=["testsrc2=s={s}:r={r}", "smptebars=s={s}:r={r}", "rgbtestsrc=s={s}:r={r}",
                  "zoneplate=s={s}:r={r}:kt2=1:kx2=48:ky2=48",
                  "gradients=s={s}:r={r}:c0=0x10A040:c1=0xF0E060:speed=0.02", "colorchart=r={r},scale={s}",
                  "yuvtestsrc=s={s}:r={r}", "pal75bars=s={s}:r={r}"],
        mandel=_MANDEL_POINTS[:4],
        effects=["fade", "dissolve", "fadeblack", "wipeleft", "wipedown", "vertopen", "circleopen"],
        # plan "slow" only (added after the first scored run on the eval videos had shown that slow blends and
        # slow wipes were the misses): slow blends and corner / diagonal / soft-edged wipes, none of them an
        # effect of the eval pool (fade and dissolve are in both pools' base effects)
        slow_effects=["fade", "dissolve", "fadeslow", "fadefast", "wipetl", "smoothdown", "diagtl", "coverup",
                      "revealleft", "wipeleft", "circleopen"],
    ),
    "eval": dict(
        tiles=["testsrc=s={s}:r={r}", "smptehdbars=s={s}:r={r}", "yuvtestsrc=s={s}:r={r}",
               "pal100bars=s={s}:r={r}", "gradients=s={s}:r={r}:c0=0x902010:c1=0x10D0C0:type=radial:seed=9",
               "mandelbrot=s={s}:r={r}:maxiter=250:start_x=-1.25066:start_y=0.02012:start_scale=0.3",
               "life=s={s}:r={r}:seed=11:mold=10:ratio=0.3", "colorchart=r={r}:preset=skintones,scale={s}",
               "testsrc2=s={s}:r={r},negate"],
        patterns=["testsrc=s={s}:r={r}", "smptehdbars=s={s}:r={r}", "pal100bars=s={s}:r={r}",
                  "zoneplate=s={s}:r={r}:kt2=2:kx2=80:ky2=60:kt=1",
                  "gradients=s={s}:r={r}:c0=0x800080:c1=0x00C0FF:speed=0.03:type=radial",
                  "gradients=s={s}:r={r}:c0=0xC03000:c1=0x2020A0:c2=0xE0E0E0:nb_colors=3:speed=0.015",
                  "testsrc2=s={s}:r={r},hue=h=200:s=1.2", "colorchart=r={r}:preset=skintones,scale={s}",
                  "yuvtestsrc=s={s}:r={r},negate"],
        mandel=_MANDEL_POINTS[4:],
        effects=["fade", "dissolve", "fadegrays", "fadeblack", "fadewhite", "wiperight", "wipeup",
                 "smoothleft", "diagbr", "coverdown", "revealright", "horzopen", "radial"],
    ),
}


@dataclass(frozen=True)
class Flash:
    """Frames ``[start, start + length)`` of a shot covered by ``color`` at opacity ``alpha``."""

    start: int
    length: int
    color: str = "white"
    alpha: float = 0.8


@dataclass(frozen=True)
class ShotSpec:
    """``frames`` frames of a lavfi `source` (``{s}`` size, ``{r}`` rate) or of the mosaic still
    (``source == "mosaic"``) followed by the filter chain `filters` (crop, zoompan, hue...)."""

    frames: int
    source: str
    filters: str = ""
    label: str = "pattern"
    flashes: tuple[Flash, ...] = ()


@dataclass(frozen=True)
class Join:
    """How a shot follows the previous one: ``effect == "cut"`` or an xfade effect over ``frames``."""

    effect: str = "cut"
    frames: int = 0

    @property
    def kind(self) -> str:
        return "cut" if self.effect == "cut" else EFFECT_KIND[self.effect]


@dataclass(frozen=True)
class Transition:
    kind: str
    effect: str
    start: int
    end: int


@dataclass
class Truth:
    frame_count: int
    fps: int
    transitions: list[Transition]
    flashes: list[int] = field(default_factory=list)  # first frame of every in-shot flash
    labels: list[str] = field(default_factory=list)  # content label of every shot

    def to_dict(self) -> dict:
        return {"frame_count": self.frame_count, "fps": self.fps, "flashes": self.flashes, "labels": self.labels,
                "transitions": [t.__dict__ for t in self.transitions]}

    @classmethod
    def from_dict(cls, d: dict) -> "Truth":
        return cls(d["frame_count"], d["fps"], [Transition(**t) for t in d["transitions"]], d["flashes"],
                   d["labels"])


# ---------------------------------------------------------------------------------------------
# scoring


def match_boundaries(pred: list[int], truth: list[Transition], tol: int = 2) -> dict:
    """One-to-one matching of predicted boundaries (first frame of each new shot) to true transitions.

    A boundary ``b`` matches a cut at ``c`` when ``|b - c| <= tol``; it matches a gradual transition
    ``[start, end)`` when ``start - tol <= b <= end + tol`` — any frame inside the blend, its first pure frame
    of the new shot, or up to `tol` frames off (the same slack a cut gets). Pairs are taken greedily by distance
    to the transition's centre. Returns precision, recall, F1, counts and the recall of the gradual ones.
    """
    pairs = []
    for i, b in enumerate(pred):
        for j, t in enumerate(truth):
            lo, hi = (t.start - tol, t.start + tol) if t.kind == "cut" else (t.start - tol, t.end + tol)
            if lo <= b <= hi:
                pairs.append((abs(b - (t.start + t.end) / 2), i, j))
    used_p, used_t = set(), set()
    for _, i, j in sorted(pairs):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    tp, n_pred, n_true = len(used_t), len(pred), len(truth)
    prec = tp / n_pred if n_pred else (1.0 if not n_true else 0.0)
    rec = tp / n_true if n_true else 1.0
    grad = [j for j, t in enumerate(truth) if t.kind != "cut"]
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "tp": tp, "fp": n_pred - tp, "fn": n_true - tp, "gradual": len(grad),
            "gradual_recall": (sum(j in used_t for j in grad) / len(grad)) if grad else None,
            "missed": [truth[j] for j in range(n_true) if j not in used_t],
            "false": [pred[i] for i in range(n_pred) if i not in used_p]}


# ---------------------------------------------------------------------------------------------
# rendering


def make_mosaic(path: str, size: tuple[int, int], pool: str = "tune", seed: int = 0, grid: int = 3) -> str:
    """A still ``grid*W x grid*H`` PNG of ``grid x grid`` tiles, each a frame of one of the pool's sources."""
    w, h = size
    rng = random.Random(seed)
    tiles = list(POOLS[pool]["tiles"])
    rng.shuffle(tiles)
    n = grid * grid
    args, labels = [], []
    for k in range(n):
        src = tiles[k % len(tiles)].format(s=f"{w}x{h}", r=25)
        pick = rng.randrange(0, 40)
        args += ["-f", "lavfi", "-i", f"{src},trim=start_frame={pick}:end_frame={pick + 1},scale={w}:{h},"
                                      f"setsar=1,format=rgb24"]
        labels.append(f"[{k}:v]")
    layout = "|".join(f"{(k % grid) * w}_{(k // grid) * h}" for k in range(n))
    fc = "".join(labels) + f"xstack=inputs={n}:layout={layout}[m]"
    run_ffmpeg(*args, "-filter_complex", fc, "-map", "[m]", "-frames:v", "1", path, what=f"mosaic {path}")
    return path


def _input_args(spec: ShotSpec, size: tuple[int, int], fps: int, mosaic: str | None) -> list[str]:
    w, h = size
    if spec.source == "mosaic":
        if not mosaic:
            raise ValueError("a mosaic shot needs a mosaic image")
        return ["-f", "lavfi", "-i", f"movie={_lavfi_path(mosaic)},loop=loop=-1:size=1,settb=1/{fps},setpts=N"]
    return ["-f", "lavfi", "-i", spec.source.format(s=f"{w}x{h}", r=fps)]


def _lavfi_path(p: str) -> str:
    """Escape a path for use inside a lavfi filter argument."""
    return "'" + os.fspath(p).replace("\\", "\\\\").replace("'", "'\\''").replace(":", "\\:") + "'"


def _shot_chain(k: int, spec: ShotSpec, size: tuple[int, int], fps: int) -> str:
    w, h = size
    parts = [f"[{k}:v]"]
    if spec.filters:
        parts.append(spec.filters.format(W=w, H=h, r=fps, N=spec.frames) + ",")
    parts.append(f"trim=end_frame={spec.frames},setpts=PTS-STARTPTS,scale={w}:{h},setsar=1,fps={fps},"
                 f"format=yuv420p,settb=1/{fps}")
    for f in spec.flashes:
        parts.append(f",drawbox=x=0:y=0:w=iw:h=ih:color={f.color}@{f.alpha}:t=fill:"
                     f"enable='between(n,{f.start},{f.start + f.length - 1})'")
    return "".join(parts) + f"[s{k}]"


def plan_frames(shots: list[ShotSpec], joins: list[Join]) -> tuple[list[Transition], list[int], int]:
    """Transitions, first output frame of every shot, and the total frame count of a plan."""
    if len(joins) != len(shots) - 1:
        raise ValueError("need one join between every two consecutive shots")
    begin, acc, trans = [0], shots[0].frames, []
    for k, (spec, j) in enumerate(zip(shots[1:], joins), start=1):
        if j.effect == "cut":
            trans.append(Transition("cut", "cut", acc, acc))
            begin.append(acc)
            acc += spec.frames
            continue
        prev_left = acc - begin[-1] - (trans[-1].end - trans[-1].start if trans and k > 1 else 0)
        if not 0 < j.frames < min(spec.frames, prev_left):
            raise ValueError(f"transition into shot {k} ({j.frames} frames) must be shorter than both shots")
        trans.append(Transition(j.kind, j.effect, acc - j.frames, acc))
        begin.append(acc - j.frames)
        acc += spec.frames - j.frames
    return trans, begin, acc


def render_video(path: str, shots: list[ShotSpec], joins: list[Join], fps: int = 25,
                 size: tuple[int, int] = (640, 360), mosaic: str | None = None, crf: int = 26) -> Truth:
    """Render the plan to an H.264 MP4 at `path` (atomically) and return its ground truth."""
    trans, begin, total = plan_frames(shots, joins)
    args: list[str] = []
    chains = []
    for k, spec in enumerate(shots):
        args += _input_args(spec, size, fps, mosaic)
        chains.append(_shot_chain(k, spec, size, fps))
    cur, acc = "[s0]", shots[0].frames
    for k, j in enumerate(joins, start=1):
        out = f"[j{k}]"
        if j.effect == "cut":
            chains.append(f"{cur}[s{k}]concat=n=2:v=1:a=0,settb=1/{fps}{out}")
            acc += shots[k].frames
        else:
            chains.append(f"{cur}[s{k}]xfade=transition={j.effect}:duration={j.frames / fps}:"
                          f"offset={(acc - j.frames) / fps}{out}")
            acc += shots[k].frames - j.frames
        cur = out
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.stem}.tmp-{os.getpid()}.mp4"
    try:
        run_ffmpeg(*args, "-filter_complex", ";".join(chains), "-map", cur, "-frames:v", str(total),
                   "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
                   "-r", str(fps), str(tmp), what=str(dst))
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    flashes = [begin[k] + f.start for k, s in enumerate(shots) for f in s.flashes]
    return Truth(total, fps, trans, sorted(flashes), [s.label for s in shots])


# ---------------------------------------------------------------------------------------------
# shot content


def pan(frames: int, size: tuple[int, int], x0: float, y0: float, x1: float, y1: float, hold: int = 0,
        **kw) -> ShotSpec:
    """Camera pan over the mosaic from (x0, y0) to (x1, y1), fractions of the free range (0..1); the camera
    holds still for the first `hold` frames, then starts moving at full speed (a motion onset)."""
    w, h = size
    t = f"max(0,n-{hold})/{max(1, frames - 1 - hold)}"
    fx = f"(iw-{w})*({x0}+({x1}-{x0})*{t})"
    fy = f"(ih-{h})*({y0}+({y1}-{y0})*{t})"
    return ShotSpec(frames, "mosaic", f"crop=w={w}:h={h}:x='{fx}':y='{fy}'", label=kw.pop("label", "pan"), **kw)


def zoom(frames: int, size: tuple[int, int], cx: float, cy: float, z0: float, z1: float, **kw) -> ShotSpec:
    """Zoom from `z0` to `z1` (>= 1, relative to a one-tile view) centred on (cx, cy), fractions of the mosaic."""
    w, h = size
    z = f"(3*({z0}+({z1}-{z0})*on/{max(1, frames - 1)}))"
    zp = (f"zoompan=z='{z}':x='max(0,min(iw-iw/zoom,{cx}*iw-iw/zoom/2))':"
          f"y='max(0,min(ih-ih/zoom,{cy}*ih-ih/zoom/2))':d=1:s={w}x{h}:fps={{r}}")
    return ShotSpec(frames, "mosaic", zp, label=kw.pop("label", "zoom"), **kw)


def fractal(frames: int, point: tuple[float, float], scale0: float, rate: float, **kw) -> ShotSpec:
    """A Mandelbrot zoom into `point`, starting at `scale0` and shrinking by `rate` per second."""
    x, y = point
    end_scale = scale0 * rate ** 60
    src = (f"mandelbrot=s={{s}}:r={{r}}:maxiter=300:start_x={x}:start_y={y}:start_scale={scale0}:"
           f"end_scale={end_scale:.3e}:end_pts={60 * 25}")
    return ShotSpec(frames, src, label=kw.pop("label", "fractal"), **kw)


def pattern(frames: int, source: str, extra: str = "", **kw) -> ShotSpec:
    return ShotSpec(frames, source + (f",{extra}" if extra else ""), label=kw.pop("label", "pattern"), **kw)


def _random_flashes(rng: random.Random, frames: int, margin_in: int, margin_out: int) -> tuple[Flash, ...]:
    out = []
    for _ in range(rng.choice([1, 1, 2])):
        lo, hi = margin_in + 8, frames - margin_out - 12
        if hi <= lo:
            break
        color, alpha = rng.choice([("white", 0.85), ("white", 0.6), ("black", 0.9), ("white", 1.0),
                                   ("0xFFE0A0", 0.7), ("white", 0.45)])
        out.append(Flash(rng.randrange(lo, hi), rng.choice([1, 1, 2, 3, 4]), color, alpha))
    out.sort(key=lambda f: f.start)
    return tuple(f for i, f in enumerate(out) if i == 0 or f.start > out[i - 1].start + out[i - 1].length + 6)


def _random_shot(rng: random.Random, pool: dict, frames: int, size, prev: ShotSpec | None,
                 lookalike: bool) -> ShotSpec:
    """A random shot; `lookalike` makes it resemble `prev` (same mosaic elsewhere, or the same pattern altered)."""
    if lookalike and prev is not None:
        if prev.source == "mosaic":
            return _random_mosaic_shot(rng, frames, size, label="lookalike-" + prev.label.split("-")[-1],
                                       away_from=_last_view(prev))
        # a zone plate is symmetric and grey: a mirrored or hue-shifted copy is the same picture
        if prev.label in ("pattern", "lookalike-pattern") and "zoneplate" not in prev.source:
            base = prev.source.split(",hue=")[0].split(",hflip")[0]
            extra = rng.choice([f"hue=h={rng.choice([-1, 1]) * rng.randint(25, 50)}", "hflip", "vflip",
                                f"hue=h={rng.randint(25, 50)},hflip"])
            return pattern(frames, base, extra, label="lookalike-pattern")
        if prev.label.endswith("fractal"):
            return fractal(frames, rng.choice(pool["mandel"]), rng.uniform(0.005, 0.05), rng.uniform(0.5, 0.8),
                           label="lookalike-fractal")
    r = rng.random()
    if r < 0.5:
        return _random_mosaic_shot(rng, frames, size)
    if r < 0.68:
        return fractal(frames, rng.choice(pool["mandel"]), rng.uniform(0.05, 1.5), rng.uniform(0.4, 0.85))
    return pattern(frames, rng.choice(pool["patterns"]))


def _last_view(spec: ShotSpec) -> tuple[float, float] | None:
    """Where a pan shot's last frame looks (fractions of the free range), None for other shots."""
    if not spec.filters.startswith("crop="):
        return None
    ends = [float(part.split("+(")[1].split("-")[0]) for part in spec.filters.split(":")[2:4]]  # the x1, y1
    return ends[0], ends[1]


def _far_point(rng: random.Random, away_from: tuple[float, float] | None, min_dist: float = 0.12):
    """A random (x, y) in [0, 1]^2 at least `min_dist` (in x or y) from `away_from`: a look-alike shot shows
    another part of the mosaic, not a jump of a few pixels that no viewer would call a new shot."""
    while True:
        x, y = rng.random(), rng.random()
        if away_from is None or max(abs(x - away_from[0]), abs(y - away_from[1])) >= min_dist:
            return x, y


def _random_mosaic_shot(rng: random.Random, frames: int, size, label: str | None = None,
                        away_from: tuple[float, float] | None = None) -> ShotSpec:
    kind = rng.choice(["pan", "pan", "fastpan", "holdpan", "zoom", "still"])
    kw = {"label": label} if label else {}
    if kind in ("pan", "fastpan", "holdpan"):
        x0, y0 = _far_point(rng, away_from)
        span = {"fastpan": (0.5, 1.0), "holdpan": (0.3, 0.7)}.get(kind, (0.1, 0.4))
        span = rng.uniform(*span)
        ang = rng.uniform(0, 6.283)
        x1 = min(1.0, max(0.0, x0 + span * math.cos(ang)))
        y1 = min(1.0, max(0.0, y0 + span * math.sin(ang)))
        hold = rng.randrange(frames // 4, frames // 2) if kind == "holdpan" else 0
        return pan(frames, size, round(x0, 3), round(y0, 3), round(x1, 3), round(y1, 3), hold=hold,
                   **({"label": kind} if not label else kw))
    if kind == "zoom":
        z0, z1 = rng.uniform(1.0, 1.6), rng.uniform(1.0, 2.5)
        return zoom(frames, size, round(rng.uniform(0.25, 0.75), 3), round(rng.uniform(0.25, 0.75), 3),
                    round(z0, 3), round(z1, 3), **kw)
    x, y = (round(v, 3) for v in _far_point(rng, away_from))
    jx, jy = round(rng.uniform(0.002, 0.01), 4), round(rng.uniform(0.002, 0.01), 4)
    return pan(frames, size, x, y, min(1.0, x + jx), min(1.0, y + jy), **({"label": "still"} if not label else kw))


def _adjacent_flash(rng: random.Random, frames: int, d_in: int, d_out: int) -> tuple[Flash, ...]:
    """One flash 1-5 frames after the incoming transition or before the outgoing one (inside the shot's own
    frames): the case where a flash's return is hard to tell from the transition's change."""
    length = rng.choice([1, 2, 3, 4])
    color, alpha = rng.choice([("white", 0.85), ("white", 1.0), ("black", 0.9), ("0xFFE0A0", 0.7)])
    gap = rng.randint(1, 5)
    start = d_in + gap if (rng.random() < 0.5 or not d_out) else frames - d_out - gap - length
    if not d_in + 1 <= start <= frames - d_out - length - 1:
        return ()
    return (Flash(start, length, color, alpha),)


PLAN_KINDS = ("hard", "gradual", "slow")


def random_plan(kind: str, n_shots: int, fps: int = 25, size: tuple[int, int] = (640, 360),
                pool: str = "tune", seed: int = 0) -> tuple[list[ShotSpec], list[Join]]:
    """A random plan. ``kind="hard"``: hard cuts only, half of them between look-alike shots, flashes in about
    half the shots, many pans / zooms / fractal zooms. ``kind="gradual"``: about 60% of the joins are xfade
    transitions of 0.4-1.6 s drawn from the pool's effects, the rest hard cuts, fewer flashes.
    ``kind="slow"`` (pools with ``slow_effects`` only): about 70% of the joins are slow transitions of
    0.8-1.6 s, and a flash lies 1-5 frames next to a transition in about a third of the shots."""
    if kind not in PLAN_KINDS:
        raise ValueError(f"kind must be one of {PLAN_KINDS}")
    rng = random.Random(f"{pool}-{kind}-{seed}")
    p = POOLS[pool]
    if kind == "slow" and "slow_effects" not in p:
        raise ValueError(f"pool {pool!r} has no slow_effects")
    share, effects, dur = {"gradual": (0.6, p["effects"], (0.4, 1.6)),
                           "slow": (0.7, p.get("slow_effects"), (0.8, 1.6))}.get(kind, (0.0, None, None))
    joins: list[Join] = []
    for _ in range(n_shots - 1):
        if share and rng.random() < share:
            joins.append(Join(rng.choice(effects), int(round(rng.uniform(*dur) * fps))))
        else:
            joins.append(Join())
    shots: list[ShotSpec] = []
    for k in range(n_shots):
        d_in = joins[k - 1].frames if k else 0
        d_out = joins[k].frames if k < n_shots - 1 else 0
        frames = max(d_in + d_out + int(1.2 * fps), int(round(rng.uniform(2.0, 6.0) * fps)))
        look = k > 0 and rng.random() < (0.5 if kind == "hard" else 0.25)
        s = _random_shot(rng, p, frames, size, shots[-1] if shots else None, look)
        if kind == "slow" and rng.random() < 0.35 and (d_in or d_out):
            s = ShotSpec(s.frames, s.source, s.filters, s.label, _adjacent_flash(rng, frames, d_in, d_out))
        elif rng.random() < (0.5 if kind == "hard" else 0.2):
            s = ShotSpec(s.frames, s.source, s.filters, s.label, _random_flashes(rng, frames, d_in, d_out))
        shots.append(s)
    return shots, joins


def make_hard_video(path: str, kind: str, n_shots: int, pool: str = "tune", seed: int = 0, fps: int = 25,
                    size: tuple[int, int] = (640, 360)) -> Truth:
    """Render `random_plan` (its mosaic is written next to `path`) and return the ground truth."""
    mosaic = make_mosaic(str(Path(path).with_suffix(".mosaic.png")), size, pool=pool, seed=seed)
    shots, joins = random_plan(kind, n_shots, fps=fps, size=size, pool=pool, seed=seed)
    return render_video(path, shots, joins, fps=fps, size=size, mosaic=mosaic)
