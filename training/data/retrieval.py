"""V-NIAH-style retrieval samples for training: find the one frame with a number among haystack frames.

A sample is `k` frames (`retrieval_frames` range, or a single frame with probability
`single_frame_share`): `k - 1` haystack frames from the lake and one needle rendered by the built-in
needle set of the benchmark (`evaluation.niah.digit_needles`, render seed `needle_seed`), at a random
position; the question and the answer format are the benchmark's (`evaluation.niah.niah_prompt`), so
the model learns the skill V-NIAH measures, and the benchmark's needles (another seed) stay held out.

Haystack hygiene (`haystack_from_lake`): a haystack frame must not show a readable text, or the
question would have two answers. Frames come from the lake's `video_frames` layer, filtered by
`curation.captioning.captioner.text_free_indices` (for a video whose clip captions record on-screen
text, from an annotation sidecar, only frames inside clips without text; for the others every frame).
Frames are stored re-encoded at `needle_size` (JPEG), so a dataset of thousands of samples stays small.
"""

from __future__ import annotations

import io
import random

from longvila import io as lio
from longvila import layout

from .build import LAYER_ASSETS, read_layer
from .options import DataOptions
from .records import make_record


def _small_jpeg(image, size: int) -> bytes:
    im = image.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def haystack_from_lake(storage: str, video_keys: list[str], size: int, log=None) -> tuple[list[bytes], list[dict]]:
    """JPEG haystack frames (`size` px) from the videos' `video_frames`, and per-video input records (key,
    frame counts, and the sha256 of each layer file read under its asset's name: the versions of the lineage)."""
    from curation.captioning.captioner import text_free_indices
    from curation.frames import decode_jpeg_frames

    frames: list[bytes] = []
    inputs: list[dict] = []
    for key in sorted(video_keys):
        url = layout.layer_path(storage, "video_frames", key)
        if not lio.exists(url):
            if log:
                log(f"[data] {key}: no video_frames yet; not used as haystack")
            continue
        table, frames_version = read_layer(url)
        versions = {LAYER_ASSETS["video_frames"]: frames_version}
        cap_url = layout.layer_path(storage, "captions", key)
        captions = None
        if lio.exists(cap_url):
            captions, versions[LAYER_ASSETS["captions"]] = read_layer(cap_url)
        pts = table.column("pts_s").to_pylist()
        keep = text_free_indices(captions, pts)
        images = decode_jpeg_frames(table.take(keep)) if keep else []
        frames += [_small_jpeg(im, size) for im in images]
        inputs.append({"video_key": key, "haystack_frames": len(images), "num_video_frames": len(pts), **versions})
    return frames, inputs


def retrieval_records(haystack: list[bytes], options: DataOptions, seed: int = 0) -> list[dict]:
    """`options.retrieval_samples` retrieval records (module docstring); deterministic for (seed, options)."""
    from evaluation.niah import digit_needles, niah_prompt

    n = options.retrieval_samples
    if n and not haystack:
        raise ValueError("retrieval samples need haystack frames; the lake gave none")
    rng = random.Random(seed * 7919 + options.needle_seed)
    needles = digit_needles(n, size=options.needle_size, seed=options.needle_seed) if n else []
    lo, hi = options.retrieval_frames
    out = []
    for i, needle in enumerate(needles):
        k = 1 if rng.random() < options.single_frame_share else rng.randint(max(2, lo), max(2, hi))
        frames = [haystack[rng.randrange(len(haystack))] for _ in range(k - 1)]
        pos = rng.randint(0, k - 1)
        frames.insert(pos, _small_jpeg(needle.image, options.needle_size))
        conv = [{"from": "human", "value": "<video>\n" + niah_prompt(needle.question)},
                {"from": "gpt", "value": needle.answer}]
        out.append(make_record(f"retrieval-{i:06d}", "retrieval", conv, frames,
                               meta={"needle": needle.id, "position": pos, "frames": k}))
    return out


__all__ = ["haystack_from_lake", "retrieval_records"]
