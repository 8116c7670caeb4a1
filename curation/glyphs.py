"""Rendered glyph frames: a short text (a digit, a number, a word) drawn large on a varied background.

One renderer serves the demo corpus (`curation.demo_corpus`: the learnable shots of the sample
videos), the built-in V-NIAH needle set (`evaluation.niah`) and the stage-5 retrieval samples
(`training.data.retrieval`), so what the smoke model learns to read in the lake is what the
benchmark asks it to read.

    style = random_style(rng)                      # background of a shot (kept for all its frames)
    img = render_glyph("7", 128, style, rng)       # one frame: new position jitter (and noise)
    img = glyph_image("7", 128, seed=3)            # style and jitter from one seed

Readability contract (measured with the smoke model, whose frames are 32x32): the text's bounding box
fills `fill` (default 75 %) of the frame's height (and at most 90 % of its width), it is centred with
a position jitter of at most `jitter` x size pixels (default 1/32: +-1 px at 32 px), and its colour
is black or white, whichever contrasts more with the background. Backgrounds vary: a random colour,
a two-colour gradient or a coloured noise texture (fixed by the style, so the frames of a shot share
it). Everything depends only on the random generator passed in.
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass
from functools import lru_cache

DIGITS = tuple(str(d) for d in range(10))

BACKGROUNDS = ("solid", "gradient", "noise")


@dataclass(frozen=True)
class GlyphStyle:
    """The background of a glyph frame: `kind` in BACKGROUNDS, two colours, gradient direction."""

    kind: str
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int]
    horizontal: bool = True
    noise_seed: int = 0

    def hue_shifted(self, turns: float) -> "GlyphStyle":
        """The same background with both colours' hue rotated by `turns` (1.0 = a full circle)."""
        return GlyphStyle(self.kind, _rotate_hue(self.colour, turns), _rotate_hue(self.colour2, turns), self.horizontal,
                          self.noise_seed)

    @property
    def luminance(self) -> float:
        return _luminance(tuple((a + b) / 2 for a, b in zip(self.colour, self.colour2)))

    @property
    def text_colour(self) -> tuple[int, int, int]:
        return (0, 0, 0) if self.luminance > 128 else (255, 255, 255)


def random_style(rng: random.Random) -> GlyphStyle:
    kind = rng.choice(BACKGROUNDS)
    c0 = tuple(rng.randint(0, 255) for _ in range(3))
    c1 = c0 if kind == "solid" else tuple(min(255, max(0, v + rng.randint(-60, 60))) for v in c0)
    return GlyphStyle(kind, c0, c1, rng.random() < 0.5, rng.getrandbits(32))


def _rotate_hue(rgb, turns: float) -> tuple[int, int, int]:
    h, light, sat = colorsys.rgb_to_hls(*(v / 255.0 for v in rgb))
    return tuple(int(round(255 * v)) for v in colorsys.hls_to_rgb((h + turns) % 1.0, light, sat))


@lru_cache(maxsize=64)
def _font(px: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=px)


def _luminance(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _background(size: int, style: GlyphStyle):
    import numpy as np
    from PIL import Image

    if style.kind == "solid":
        return Image.new("RGB", (size, size), style.colour)
    a0, a1 = np.array(style.colour, dtype=np.float32), np.array(style.colour2, dtype=np.float32)
    if style.kind == "gradient":
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)
        ramp = t[None, :, None] if style.horizontal else t[:, None, None]
        arr = a0 + (a1 - a0) * np.broadcast_to(ramp, (size, size, 1))
    elif style.kind == "noise":
        gen = np.random.default_rng(style.noise_seed)
        arr = a0 + gen.normal(0.0, 18.0, size=(size, size, 3)).astype(np.float32)
    else:
        raise ValueError(f"unknown glyph background {style.kind!r}; use one of {BACKGROUNDS}")
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


@lru_cache(maxsize=256)
def _fit_font_px(text: str, size: int, fill: float) -> int:
    """The largest font size whose text box is at most `fill` x size high and 90 % of size wide."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    px = max(6, int(size * fill * 1.4))
    while px > 6:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=_font(px))
        if bottom - top <= fill * size and right - left <= 0.9 * size:
            break
        px = max(6, int(px * 0.93))
    return px


def render_glyph(text: str, size: int, style: GlyphStyle, rng: random.Random, fill: float = 0.75,
                 jitter: float = 1 / 32):
    """A size x size RGB PIL image of `text` on `style`'s background (module docstring: the contract)."""
    from PIL import ImageDraw

    if size < 16:
        raise ValueError(f"glyph frame size too small: {size}")
    if not text:
        raise ValueError("empty glyph text")
    img = _background(size, style)
    draw = ImageDraw.Draw(img)
    font = _font(_fit_font_px(text, size, fill))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    j = max(1, round(jitter * size))
    x = (size - (right - left)) / 2 - left + rng.randint(-j, j)
    y = (size - (bottom - top)) / 2 - top + rng.randint(-j, j)
    draw.text((x, y), text, fill=style.text_colour, font=font)
    return img


def glyph_image(text: str, size: int, seed: int):
    """One glyph frame whose style and jitter depend only on `seed`."""
    rng = random.Random(seed)
    return render_glyph(text, size, random_style(rng), rng)


def colour_name(rgb) -> str:
    """A coarse English name of a colour (for captions)."""
    r, g, b = rgb
    lum = _luminance(rgb)
    if max(rgb) - min(rgb) < 40:
        return "black" if lum < 60 else "white" if lum > 200 else "grey"
    if r >= g and r >= b:
        return "orange" if g > 0.55 * r and b < 0.5 * r else "pink" if b > 0.6 * r else "red"
    if g >= r and g >= b:
        return "yellow" if r > 0.75 * g else "green"
    return "purple" if r > 0.6 * b else "blue"


__all__ = ["DIGITS", "BACKGROUNDS", "GlyphStyle", "random_style", "render_glyph", "glyph_image", "colour_name"]
