"""Options of a stage's data (`data.options` in a recipe): what the dataset builder mixes in.

    data:
      kind: caption_and_qa
      options: {caption_share: 0.25, frame_samples: 2, passkey_samples: 300, passkey_digits: 1}

| option | default | meaning |
|---|---|---|
| caption_source | any | clip captions that make caption samples: `any`, `annotation` (sidecars), `model`, or |
| | | `prefer_annotation` (sidecar captions when any of the videos has them, else all the model's captions |
| | | with `caption_share` 1: the smoke recipe's stages still train on a folder without sidecars) |
| caption_share | 1.0 | share of the clips (by a hash) that keep their caption, "what happens" and "order" samples |
| frame_samples | 0 | single-frame short-QA samples per clip with on-screen text (frames spread over the clip) |
| passkey_samples | 0 | text-only passkey samples mixed into the stage (kind `passkey` has `num_samples`) |
| passkey_digits | 5 | digits of a passkey |
| passkey_min_fill | 1.0 | a passkey sample fills a random share in [min_fill, 1] of the stage's max_length |
| retrieval_samples | 0 | V-NIAH-style retrieval samples (`training.data.retrieval`): lake haystack, rendered needle |
| retrieval_frames | [2, 8] | frames per retrieval sample (inclusive range, needle included) |
| single_frame_share | 0.2 | share of retrieval samples with the needle alone (one frame) |
| needle_seed | 0 | render seed of the training needles (the benchmark's held-out needles use another) |
| needle_size | 64 | side of the rendered needle and haystack frames stored in the dataset (pixels) |

`parse_options(kind, options, source)` validates once, when the recipe loads (`RecipeError` naming
the field); builders take the resulting `DataOptions`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from longvila.errors import InputError


@dataclass(frozen=True)
class DataOptions:
    caption_source: str = "any"
    caption_share: float = 1.0
    frame_samples: int = 0
    passkey_samples: int = 0
    passkey_digits: int = 5
    passkey_min_fill: float = 1.0
    retrieval_samples: int = 0
    retrieval_frames: tuple[int, int] = (2, 8)
    single_frame_share: float = 0.2
    needle_seed: int = 0
    needle_size: int = 64


CAPTION_SOURCES = ("any", "annotation", "model", "prefer_annotation")
_RANGES: dict[str, tuple[float, float]] = {
    "caption_share": (0.0, 1.0), "frame_samples": (0, 64), "passkey_samples": (0, 10**7),
    "passkey_digits": (1, 12), "passkey_min_fill": (0.01, 1.0), "retrieval_samples": (0, 10**7),
    "single_frame_share": (0.0, 1.0), "needle_seed": (0, 2**31), "needle_size": (16, 1024),
}


def _cast(name: str, value: Any, default: Any, source: str) -> Any:
    if isinstance(default, str):
        if value not in CAPTION_SOURCES:
            raise InputError(source, f"data.options.{name}: {value!r} is not one of {CAPTION_SOURCES}")
        return value
    if isinstance(default, tuple):
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)
                and 1 <= value[0] <= value[1]):
            raise InputError(source, f"data.options.{name}: expected [min, max] frame counts with 1 <= min <= max, "
                                     f"got {value!r}")
        return (int(value[0]), int(value[1]))
    kind = type(default)
    integral = isinstance(value, (int, float)) and float(value).is_integer()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not integral):
        raise InputError(source, f"data.options.{name}: expected a {kind.__name__}, got {value!r}")
    lo, hi = _RANGES[name]
    if not lo <= value <= hi:
        raise InputError(source, f"data.options.{name}: {value} is outside [{lo}, {hi}]")
    return kind(value)


def parse_options(options: Mapping[str, Any] | None, source: str = "recipe") -> DataOptions:
    """Validated `DataOptions` from a recipe's `data.options` mapping (None: all defaults)."""
    if options is None:
        return DataOptions()
    if not isinstance(options, Mapping):
        raise InputError(source, f"data.options: expected a mapping, got {type(options).__name__}")
    defaults = {f.name: f.default for f in dataclasses.fields(DataOptions)}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise InputError(source, f"data.options: unknown option(s) {unknown}; allowed: {sorted(defaults)}")
    return DataOptions(**{k: _cast(k, v, defaults[k], source) for k, v in options.items()})


__all__ = ["DataOptions", "parse_options"]
