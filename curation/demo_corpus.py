"""The demo corpus: sample videos with known, learnable content, and an annotation sidecar per video.

`make_demo_corpus(dest)` writes

* `lesson_NN.mp4` (`lessons` of them): square videos made of *glyph shots* (a digit drawn large, see
  `curation.glyphs`, on a background whose hue drifts through the shot, so that no two frames of a
  shot look alike and a background never identifies a digit) separated by *distractor shots* (the
  ffmpeg test patterns of `curation.synth.SOURCES`, content without text). Beside each video its
  annotation sidecar (`curation.captioning.sidecar`): the shot spans with a caption each ("The number
  7 in white on a red background.") and, for glyph shots, the on-screen text ("7"), as JSON (with
  `srt_every` > 0 every `srt_every`-th lesson gets an SRT sidecar instead: captions only, so nothing
  tells its digit frames from text-free ones; the demo keeps lessons in JSON).
* the sample corpus of `curation.synth.make_sample_corpus` (synthetic pattern videos and a real test
  video; their clips are captioned by the VLM), where `srt_video` gets an SRT sidecar with a generic
  caption per shot (the SRT path of the caption layer).

Everything is a pure function of `seed`. Cuts fall on frame boundaries (`fps` frames per second), so
the sidecar spans are exact; consecutive glyph shots get backgrounds half a hue circle apart, so a
colour-histogram shot detector sees every cut. Returns `{file name: {"cuts", "duration_s", "fps",
"sidecar"}}` like `make_sample_corpus` (`sidecar` names the annotation file, None without one).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .glyphs import DIGITS, GlyphStyle, colour_name, random_style, render_glyph
from .synth import SOURCES, make_sample_corpus, make_synthetic_video

# distractor sources: moving or textured patterns without digits in them (testsrc* draw a frame counter)
DISTRACTORS = tuple(s for s in SOURCES if not s.startswith(("testsrc", "color=")))
PATTERN_CAPTION = "A test pattern of coloured shapes, bars and gradients; no text is shown."


@dataclass(frozen=True)
class Shot:
    frames: int
    text: str | None  # the glyph shown, None for a distractor shot
    caption: str


def _style_after(prev: GlyphStyle | None, rng: random.Random) -> GlyphStyle:
    """A random background at least 80 luminance levels away from `prev` (the last frame's), so a cut shows."""
    while True:
        style = random_style(rng)
        if prev is None or abs(style.luminance - prev.luminance) >= 80:
            return style


def _glyph_shot(text: str, n: int, size: int, rng: random.Random, style: GlyphStyle):
    """Frames of one glyph shot (the background's hue drifting by 0.3 to 0.6 of a turn), its caption and
    the style of its last frame."""
    span = rng.uniform(0.3, 0.6)
    styles = [style.hue_shifted(span * i / (n - 1)) for i in range(n)]
    frames = [np.asarray(render_glyph(text, size, s, rng)) for s in styles]
    ink = "black" if style.text_colour == (0, 0, 0) else "white"
    kind = "number" if text.isdigit() else "word"
    first, last = colour_name(styles[0].colour), colour_name(styles[-1].colour)
    bg = f"a {first} background" if first == last else f"a background shifting from {first} to {last}"
    return frames, f"The {kind} {text} in {ink} on {bg}.", styles[-1]


def _distractor_frames(specs: list[str], n: int, size: int, fps: int) -> list[list[np.ndarray]]:
    """`n` frames of each lavfi source in `specs`, rendered in one ffmpeg run."""
    import av

    with tempfile.TemporaryDirectory(prefix="demo-corpus-") as td:
        path = str(Path(td) / "distractors.mp4")
        make_synthetic_video(path, [(n / fps, s) for s in specs], fps=fps, size=(size, size))
        with av.open(path) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return [frames[i * n:(i + 1) * n] for i in range(len(specs))]


def _encode(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """H.264 (yuv420p) at `fps`, written to a temporary name then renamed."""
    import av

    tmp = path.parent / f".{path.stem}.tmp-{os.getpid()}{path.suffix}"
    try:
        with av.open(str(tmp), "w") as c:
            st = c.add_stream("libx264", rate=fps)
            st.width, st.height, st.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
            st.options = {"crf": "18", "preset": "veryfast", "g": str(4 * fps)}
            for arr in frames:
                for pkt in st.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    c.mux(pkt)
            for pkt in st.encode():
                c.mux(pkt)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def lesson(path: Path, rng: random.Random, glyph_shots: int, size: int, fps: int) -> list[Shot]:
    """Write one lesson video; returns its shots in order (a distractor after every third glyph shot)."""
    n_distractors = glyph_shots // 3
    d_len = 2 * fps
    specs = [DISTRACTORS[rng.randrange(len(DISTRACTORS))] for _ in range(n_distractors)]
    distractors = iter(_distractor_frames(specs, d_len, size, fps))
    frames: list[np.ndarray] = []
    shots: list[Shot] = []
    last = None
    for i in range(glyph_shots):
        text = rng.choice(DIGITS)
        n = rng.randint(2 * fps, 3 * fps)
        fr, caption, last = _glyph_shot(text, n, size, rng, _style_after(last, rng))
        frames += fr
        shots.append(Shot(n, text, caption))
        if i % 3 == 2:
            frames += next(distractors)
            shots.append(Shot(d_len, None, PATTERN_CAPTION))
    _encode(path, frames, fps)
    return shots


def _spans(shots: list[Shot], fps: int) -> list[tuple[float, float, Shot]]:
    out, start = [], 0
    for s in shots:
        out.append((start / fps, (start + s.frames) / fps, s))
        start += s.frames
    return out


def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_sidecar(video: Path, shots: list[Shot], fps: int, srt: bool) -> Path:
    """The annotation sidecar of a lesson video (JSON with on-screen text, or SRT)."""
    spans = _spans(shots, fps)
    if srt:
        path = video.with_suffix(".srt")
        body = "\n".join(f"{i + 1}\n{_srt_time(a)} --> {_srt_time(b)}\n{s.caption}\n"
                         for i, (a, b, s) in enumerate(spans))
    else:
        path = video.with_suffix(".json")
        segs = [{"start": a, "end": b, "caption": s.caption, **({"text": s.text} if s.text else {})}
                for a, b, s in spans]
        body = json.dumps({"segments": segs}, indent=1) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _sample_corpus(d: Path, srt_video: str | None) -> dict:
    """`curation.synth.make_sample_corpus`, with an SRT sidecar (one generic caption per shot) for `srt_video`."""
    out = {name: {**info, "sidecar": None} for name, info in make_sample_corpus(str(d)).items()}
    info = out.get(srt_video or "")
    if info and info["cuts"] is not None:
        bounds = [0, *info["cuts"], round(info["duration_s"] * info["fps"])]
        shots = [Shot(b - a, None, f"A synthetic test pattern, shot {i + 1} of {len(bounds) - 1}.")
                 for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        info["sidecar"] = write_sidecar(d / srt_video, shots, info["fps"], srt=True).name
    return out


def make_demo_corpus(dest_dir: str, seed: int = 0, lessons: int = 6, glyph_shots: int = 80, size: int = 128,
                     fps: int = 8, srt_every: int = 0, with_sample_corpus: bool = True,
                     srt_video: str | None = "street_cuts.mp4") -> dict:
    """Write the demo corpus into `dest_dir` (module docstring); returns the per-file info."""
    d = Path(dest_dir)
    d.mkdir(parents=True, exist_ok=True)
    out = _sample_corpus(d, srt_video) if with_sample_corpus else {}
    for i in range(lessons):
        path = d / f"lesson_{i + 1:02d}.mp4"
        shots = lesson(path, random.Random(seed * 1000 + i), glyph_shots, size, fps)
        side = write_sidecar(path, shots, fps, srt=srt_every > 0 and i % srt_every == srt_every - 1)
        starts = [round(a * fps) for a, _, _ in _spans(shots, fps)]
        out[path.name] = {"cuts": starts[1:], "duration_s": sum(s.frames for s in shots) / fps, "fps": fps,
                          "sidecar": side.name}
    return out


__all__ = ["make_demo_corpus", "lesson", "write_sidecar", "Shot", "DISTRACTORS", "PATTERN_CAPTION"]
