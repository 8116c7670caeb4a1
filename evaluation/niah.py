"""V-NIAH: video needle-in-a-haystack (after LongVA / LongVILA).

A haystack is a sequence of frames from any video, sampled at 1 fps by default. A needle is an image
with a question and its answer, from a needle set (`load_needles`):

* `needle_set="digits"` (default): the built-in renderer, a digit drawn large on a varied background
  (`curation.glyphs`, the renderer of the demo corpus and of the stage-5 retrieval samples, readable
  by the smoke model at its 32x32 frames), question "Which number appears in the video?"; the render
  `seed` decides the images, so a seed other than the training one gives held-out needles;
* `needle_set="text"`: words and numbers in black on a light background (`default_needles`);
* `needles_dir`: a user's set in the layout of the public V-NIAH needle set (LongVA's
  `lmms-lab/v_niah_needles`): a Parquet file, or a folder of Parquet files, with columns `image`
  (bytes, or a struct with `bytes`), `question` and `answer`; or a folder of images with a
  `metadata.jsonl` / `needles.jsonl` / `needles.json` listing `{"file_name", "question", "answer"}`.
  `num_needles` takes the first N of the set (0: all).
For each frame count N of the grid and each depth d (0-100 %), the sample is N frames: the first N-1
haystack frames with the needle inserted at index `needle_position(N, d) = round(d/100 * (N-1))`,
so depth 0 is the first frame and depth 100 the last. The model is asked the needle's question and
scored by a normalised exact match of its greedy answer (see `evaluation.answers.normalize_answer`).

Two ways to score a sample (`score_sample`):
* an object with `greedy_continuation(frames, prompt, target) -> str` (the LongVILA model runner,
  `evaluation.runner.ModelRunner`, single-process or MM-SP sharded): one forward over
  prompt + answer tokens, the arg-max at each answer position decoded. That string equals the first
  len(answer) tokens that greedy decoding would produce (a greedy decode that matches the answer's
  first k tokens sees exactly the teacher-forced prefix), so "normalised prediction == answer" is the
  exact-match-of-greedy-answer criterion, at the cost of a single (shardable) prefill;
* any callable `answer(frames, prompt) -> str` (a scripted answerer, another model): the normalised
  reply must start with the answer's words.

Outputs: per-sample records, the accuracy grid (frame count x depth), a markdown table and a heatmap
PNG (matplotlib, Agg backend; red = miss, green = hit, as in LongVA's figure).
"""

from __future__ import annotations

import io
import json
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from longvila import io as lio
from longvila import layout
from longvila.errors import InputError
from longvila.progress import ProgressFn, Throttled

from .answers import answers_match, normalize_answer

__all__ = [
    "Needle",
    "NiahConfig",
    "NiahSample",
    "NiahResult",
    "render_needle",
    "default_needles",
    "digit_needles",
    "read_needle_set",
    "load_needles",
    "needle_position",
    "build_grid",
    "assemble_frames",
    "load_haystack",
    "haystack_from_frames_parquet",
    "pick_lake_haystack",
    "synthetic_haystack",
    "niah_prompt",
    "score_sample",
    "run_niah",
    "heatmap_png",
    "write_niah_outputs",
]

PROMPT_SUFFIX = "Answer with a single word or number."

_WORDS = [
    "apple", "river", "candle", "tiger", "violin", "planet", "garden", "rocket", "castle", "pencil",
    "orange", "bridge", "mirror", "falcon", "island", "ladder", "marble", "piano", "shadow", "window",
]


@dataclass
class Needle:
    """A needle frame with its question and reference answer."""

    image: Any  # PIL.Image.Image
    question: str
    answer: str
    kind: str = "custom"  # "word" | "number" | "custom"
    id: str = ""

    def meta(self) -> dict:
        return {"id": self.id, "kind": self.kind, "question": self.question, "answer": self.answer}


def render_needle(text: str, size: tuple[int, int] = (384, 384), seed: int = 0):
    """A frame showing `text` in large black letters on a light, seed-dependent background."""
    from PIL import Image, ImageDraw, ImageFont

    w, h = int(size[0]), int(size[1])
    if w < 16 or h < 16:
        raise ValueError(f"needle size too small: {size}")
    rng = random.Random(seed)
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    # largest font size whose text fits 85 % of the width and 60 % of the height
    fsize = max(8, int(h * 0.6))
    while True:
        font = ImageFont.load_default(size=fsize)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if (right - left <= 0.85 * w and bottom - top <= 0.6 * h) or fsize <= 8:
            break
        fsize = int(fsize * 0.9)
    tw, th = right - left, bottom - top
    draw.rectangle([2, 2, w - 3, h - 3], outline=(0, 0, 0), width=max(2, w // 96))
    draw.text(((w - tw) / 2 - left, (h - th) / 2 - top), text, fill=(0, 0, 0), font=font)
    return img


def default_needles(n: int = 2, size: tuple[int, int] = (384, 384), seed: int = 0) -> list[Needle]:
    """`n` needles alternating a word and a number, deterministic for a seed."""
    if n < 1:
        raise ValueError("need at least one needle")
    rng = random.Random(seed)
    words = rng.sample(_WORDS, k=min(n, len(_WORDS)))
    needles = []
    for i in range(n):
        if i % 2 == 0:
            text, kind = words[(i // 2) % len(words)], "word"
        else:
            text, kind = str(rng.randint(10, 999)), "number"
        needles.append(
            Needle(
                image=render_needle(text, size=size, seed=seed * 1000 + i),
                question=f"What is the {kind} shown in the needle frame?",
                answer=text,
                kind=kind,
                id=f"{kind}-{i}",
            )
        )
    return needles


NEEDLE_SETS = ("digits", "text")


DIGIT_QUESTION = "Which number appears in the video?"


def digit_needles(n: int, size: int = 64, seed: int = 0) -> list[Needle]:
    """`n` built-in needles: the digits 0-9 in a seed-shuffled order (repeating), each rendered by
    `curation.glyphs.glyph_image` with its own seed-derived background and jitter."""
    from curation.glyphs import DIGITS, glyph_image

    if n < 1:
        raise ValueError("need at least one needle")
    order = list(DIGITS)
    random.Random(seed).shuffle(order)
    return [Needle(image=glyph_image(order[i % 10], size, seed * 100003 + i), question=DIGIT_QUESTION,
                   answer=order[i % 10], kind="number", id=f"digit-{seed}-{i}") for i in range(n)]


@dataclass
class NiahConfig:
    """The V-NIAH grid. Depths are percentages 0..100; frame counts include the needle frame."""

    frame_counts: list[int] = field(default_factory=lambda: [8, 16, 32])
    depths: list[float] = field(default_factory=lambda: [0.0, 25.0, 50.0, 75.0, 100.0])
    num_needles: int = 2
    fps: float = 1.0
    frame_size: int = 384
    seed: int = 0
    max_new_tokens: int = 8  # generation budget for free-form answerers
    needle_set: str = "digits"  # built-in set: "digits" | "text" (ignored when needles_dir is given)
    needles_dir: str | None = None  # a user's needle set (module docstring)

    def validate(self) -> "NiahConfig":
        if not self.frame_counts or any(int(n) < 1 for n in self.frame_counts):
            raise ValueError(f"frame_counts must be positive integers: {self.frame_counts}")
        if not self.depths or any(not (0.0 <= float(d) <= 100.0) for d in self.depths):
            raise ValueError(f"depths must lie in [0, 100]: {self.depths}")
        if self.fps <= 0:
            raise ValueError("fps must be positive")
        if self.needle_set not in NEEDLE_SETS:
            raise ValueError(f"needle_set must be one of {NEEDLE_SETS}, got {self.needle_set!r}")
        if self.num_needles < (0 if self.needles_dir else 1):
            raise ValueError(f"num_needles must be >= 1 (0 = all of a needles_dir), got {self.num_needles}")
        self.frame_counts = sorted({int(n) for n in self.frame_counts})
        self.depths = sorted({float(d) for d in self.depths})
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def needle_position(frame_count: int, depth: float) -> int:
    """Index of the needle among `frame_count` frames at `depth` percent (0 -> first, 100 -> last)."""
    if frame_count < 1:
        raise ValueError("frame_count must be >= 1")
    if not 0.0 <= depth <= 100.0:
        raise ValueError(f"depth must be in [0, 100], got {depth}")
    # round half up (not banker's rounding) so that positions are monotone in depth
    return min(frame_count - 1, int(math.floor(depth / 100.0 * (frame_count - 1) + 0.5)))


@dataclass(frozen=True)
class NiahSample:
    frame_count: int
    depth: float
    needle: int  # index into the needle list
    position: int  # needle's index among the sample's frames


def build_grid(frame_counts: Sequence[int], depths: Sequence[float], num_needles: int) -> list[NiahSample]:
    """Every (frame count, depth, needle) combination, in a fixed order."""
    return [
        NiahSample(int(n), float(d), k, needle_position(int(n), float(d)))
        for n in sorted({int(x) for x in frame_counts})
        for d in sorted({float(x) for x in depths})
        for k in range(num_needles)
    ]


def assemble_frames(haystack: Sequence[Any], needle_image: Any, sample: NiahSample) -> list[Any]:
    """The sample's frames: frame_count - 1 haystack frames (repeated cyclically when the haystack is
    shorter) with the needle inserted once at `sample.position`."""
    if not haystack:
        raise ValueError("empty haystack")
    n_hay = sample.frame_count - 1
    hay = [haystack[i % len(haystack)] for i in range(n_hay)]
    return hay[: sample.position] + [needle_image] + hay[sample.position :]


def _resize_frames(frames: list, size: int) -> list:
    out = []
    for im in frames:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size))
        out.append(im)
    return out


def load_haystack(video: str, fps: float = 1.0, max_frames: int = 64, size: int = 384) -> list:
    """Haystack frames of a video file sampled at `fps` (via curation.frames), as RGB PIL images."""
    from curation.frames import decode_jpeg_frames, sample_video_frames

    with lio.local_copy(video) as local:
        table = sample_video_frames(local, fps=fps, max_frames=max_frames)
    frames = decode_jpeg_frames(table)
    if not frames:
        raise InputError(str(video), "no frames could be sampled for the V-NIAH haystack")
    return _resize_frames(frames, size)


def _read_table(url: str, what: str):
    try:
        return lio.read_parquet(url)
    except FileNotFoundError as exc:
        raise InputError(str(url), f"{what} file does not exist") from exc
    except Exception as exc:  # corrupt or not parquet
        raise InputError(str(url), f"cannot read {what}: {exc}") from exc


def haystack_from_frames_parquet(url: str, max_frames: int = 64, size: int = 384,
                                 captions_url: str | None = None) -> list:
    """Haystack frames from a `video_frames` layer file of the lake (JPEG frames in Parquet). With the
    video's clip captions (`captions_url`), frames of clips annotated with on-screen text are left out
    (`curation.captioning.captioner.text_free_indices`)."""
    from curation.captioning.captioner import text_free_indices
    from curation.frames import decode_jpeg_frames

    table = _read_table(url, "video_frames")
    if captions_url:
        keep = text_free_indices(_read_table(captions_url, "clip captions"), table.column("pts_s").to_pylist())
        table = table.take(keep)
    frames = decode_jpeg_frames(table.slice(0, max_frames))
    if not frames:
        raise InputError(str(url), "video_frames file holds no (text-free) frames")
    return _resize_frames(frames, size)


def pick_lake_haystack(storage: str, settings=None) -> str | None:
    """Partition key of the lake video with the most text-free `video_frames` (the longest haystack that
    holds no readable text; a V-NIAH haystack shorter than the grid's frame counts is repeated)."""
    from curation.captioning.captioner import text_free_indices

    fs, root = lio.get_fs(lio.join(storage, "video_frames"), settings)
    try:
        names = sorted(n.rsplit("/", 1)[-1] for n in fs.ls(root, detail=False) if n.endswith(".parquet"))
    except FileNotFoundError:
        return None
    from longvila.keys import is_valid_key

    best, best_n = None, 0
    for name in names:
        key = name[: -len(".parquet")]
        if not is_valid_key(key):  # a temporary or foreign file, not a video partition's frames
            continue
        pts = lio.read_parquet(layout.layer_path(storage, "video_frames", key), settings, columns=["pts_s"]).column(
            "pts_s").to_pylist()
        cap = layout.layer_path(storage, "captions", key)
        caps = lio.read_parquet(cap, settings) if lio.exists(cap, settings) else None
        n = len(text_free_indices(caps, pts))
        if n > best_n:
            best, best_n = key, n
    return best


def synthetic_haystack(path: str, duration_s: int = 32, size: int = 128, frame_size: int = 384,
                       fps: float = 1.0) -> list:
    """Generate a haystack video with curation.synth (several shots of ffmpeg test sources) and
    sample it; used when no real video is available (smoke runs, tests)."""
    from curation.synth import make_synthetic_video

    sources = ["testsrc2", "smptebars", "rgbtestsrc", "testsrc"]
    per = max(1, duration_s // len(sources))
    shots = [(per, src) for src in sources]
    make_synthetic_video(path, shots=shots, fps=8, size=(size, size))
    return load_haystack(path, fps=fps, max_frames=duration_s, size=frame_size)


def niah_prompt(question: str) -> str:
    return f"{question} {PROMPT_SUFFIX}"


def score_sample(model: Any, frames: list, needle: Needle, max_new_tokens: int = 8) -> dict:
    """Score one sample. Returns {"prediction", "correct", "contains", "method"}."""
    prompt = niah_prompt(needle.question)
    if hasattr(model, "greedy_continuation"):
        pred = model.greedy_continuation(frames, prompt, needle.answer)
        correct = answers_match(pred, needle.answer, "exact")
        method = "teacher_forced_greedy"
    elif callable(model):
        pred = model(frames, prompt)
        correct = answers_match(pred, needle.answer, "prefix")
        method = "free_generation"
    else:
        raise TypeError("model must have greedy_continuation() or be a callable(frames, prompt) -> str")
    return {
        "prediction": "" if pred is None else str(pred),
        "correct": bool(correct),
        "contains": bool(answers_match(pred, needle.answer, "contains")),
        "method": method,
    }


@dataclass
class NiahResult:
    config: dict
    needles: list[dict]
    records: list[dict]
    haystack_frames: int = 0
    haystack_repeated: bool = False
    method: str = ""

    def grid(self) -> dict[tuple[int, float], float]:
        acc: dict[tuple[int, float], list[bool]] = {}
        for r in self.records:
            acc.setdefault((r["frame_count"], r["depth"]), []).append(bool(r["correct"]))
        return {k: sum(v) / len(v) for k, v in sorted(acc.items())}

    @property
    def frame_counts(self) -> list[int]:
        return sorted({r["frame_count"] for r in self.records})

    @property
    def depths(self) -> list[float]:
        return sorted({r["depth"] for r in self.records})

    @property
    def accuracy(self) -> float:
        return sum(bool(r["correct"]) for r in self.records) / len(self.records) if self.records else 0.0

    def accuracy_by_frame_count(self) -> dict[int, float]:
        out: dict[int, list[bool]] = {}
        for r in self.records:
            out.setdefault(r["frame_count"], []).append(bool(r["correct"]))
        return {k: sum(v) / len(v) for k, v in sorted(out.items())}

    def to_markdown(self) -> str:
        g = self.grid()
        head = "| depth \\ frames | " + " | ".join(str(n) for n in self.frame_counts) + " |"
        sep = "|---|" + "---|" * len(self.frame_counts)
        rows = [
            f"| {d:g}% | " + " | ".join(f"{g[(n, d)]:.2f}" for n in self.frame_counts) + " |"
            for d in self.depths
        ]
        tail = "| **mean** | " + " | ".join(
            f"**{v:.2f}**" for v in self.accuracy_by_frame_count().values()) + " |"
        return "\n".join([head, sep, *rows, tail])

    def summary(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "samples": len(self.records),
            "method": self.method,
            "by_frame_count": {str(k): v for k, v in self.accuracy_by_frame_count().items()},
            "grid": [{"frame_count": n, "depth": d, "accuracy": a} for (n, d), a in self.grid().items()],
            "haystack_frames": self.haystack_frames,
            "haystack_repeated": self.haystack_repeated,
        }

    def to_json(self) -> dict:
        return {"summary": self.summary(), "config": self.config, "needles": self.needles,
                "records": self.records}

    @classmethod
    def from_json(cls, obj: dict) -> "NiahResult":
        s = obj.get("summary", {})
        return cls(config=obj["config"], needles=obj["needles"], records=obj["records"],
                   haystack_frames=s.get("haystack_frames", 0),
                   haystack_repeated=s.get("haystack_repeated", False), method=s.get("method", ""))


_METADATA_FILES = ("metadata.jsonl", "needles.jsonl", "needles.json")


def _needle_rows_from_folder(folder: str) -> list[tuple[dict, str]]:
    """(row, where) pairs of a needle folder's listing, or of its Parquet files."""
    for name in _METADATA_FILES:
        url = lio.join(folder, name)
        if lio.exists(url):
            text = lio.read_bytes(url).decode("utf-8")
            try:
                rows = json.loads(text) if name.endswith(".json") else [
                    json.loads(line) for line in text.splitlines() if line.strip()]
            except ValueError as exc:
                raise InputError(url, f"not valid JSON: {exc}") from None
            if not isinstance(rows, list):
                raise InputError(url, "expected a list of {file_name, question, answer}")
            return [(r, f"{url} entry {i}") for i, r in enumerate(rows)]
    fs, root = lio.get_fs(folder)
    shards = sorted(f for f in fs.find(root) if f.endswith(".parquet")) if fs.exists(root) else []
    if not shards:
        raise InputError(folder, f"no needle set: neither {' / '.join(_METADATA_FILES)} nor *.parquet files")
    proto = folder.split("://", 1)[0] + "://" if lio.is_remote(folder) else ""
    return [row for shard in shards for row in _needle_rows_from_parquet(proto + shard)]


def _needle_rows_from_parquet(url: str) -> list[tuple[dict, str]]:
    try:
        table = lio.read_parquet(url)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise InputError(url, f"cannot read the needle Parquet file: {exc}") from None
    return [(r, f"{url} row {i}") for i, r in enumerate(table.to_pylist())]


def _needle_image(row: dict, where: str, folder: str | None):
    from training.data.records import iter_jpeg_images

    img = row.get("image")
    if isinstance(img, dict):  # Hugging Face datasets' Image feature: {"bytes", "path"}
        img = img.get("bytes") or img.get("path")
    if img is None:
        img = row.get("file_name") or row.get("path")
    if isinstance(img, str):
        if folder is None:
            raise InputError(where, f"image {img!r} is a path but the set is not a folder")
        img = lio.read_bytes(lio.join(folder, img)) if lio.exists(lio.join(folder, img)) else None
    if not isinstance(img, (bytes, bytearray)):
        raise InputError(where, "no image (expected `image` bytes or a `file_name` in the folder)")
    return next(iter_jpeg_images([bytes(img)], where))  # any PIL-readable format, despite the name


def read_needle_set(path: str, limit: int = 0) -> list[Needle]:
    """A user's needle set (Parquet file, folder of Parquet files, or image folder with a listing; see
    the module docstring). InputError names the file and row of anything unusable."""
    is_parquet = str(path).endswith(".parquet")
    if is_parquet and not lio.exists(path):
        raise InputError(str(path), "needle set does not exist")
    rows = _needle_rows_from_parquet(path) if is_parquet else _needle_rows_from_folder(path)
    rows = rows[:limit] if limit > 0 else rows
    needles = []
    for i, (row, where) in enumerate(rows):
        q, a = row.get("question"), row.get("answer")
        if not isinstance(q, str) or not q.strip() or not isinstance(a, (str, int)) or not str(a).strip():
            raise InputError(where, "needs a non-empty `question` and `answer`")
        image = _needle_image(row, where, None if is_parquet else path)
        needles.append(Needle(image=image, question=q.strip(), answer=str(a).strip(), kind="custom",
                              id=str(row.get("id") or f"needle-{i}")))
    if not needles:
        raise InputError(str(path), "the needle set is empty")
    return needles


def load_needles(cfg: NiahConfig) -> list[Needle]:
    """The needles of a V-NIAH run: the user's set (`needles_dir`) or the built-in `needle_set`,
    resized to `frame_size` squares."""
    if cfg.needles_dir:
        needles = read_needle_set(cfg.needles_dir, cfg.num_needles)
    elif cfg.needle_set == "digits":
        needles = digit_needles(cfg.num_needles, size=cfg.frame_size, seed=cfg.seed)
    else:
        needles = default_needles(cfg.num_needles, size=(cfg.frame_size, cfg.frame_size), seed=cfg.seed)
    for n in needles:
        n.image = _resize_frames([n.image], cfg.frame_size)[0]
    return needles


def run_niah(model: Any, haystack: Sequence[Any], config: NiahConfig | None = None,
             needles: list[Needle] | None = None, progress: ProgressFn | None = None) -> NiahResult:
    """Evaluate `model` on the whole grid. `haystack` is a list of PIL frames."""
    cfg = (config or NiahConfig()).validate()
    if not haystack:
        raise InputError("haystack", "V-NIAH needs at least one haystack frame")
    needles = needles or load_needles(cfg)
    samples = build_grid(cfg.frame_counts, cfg.depths, len(needles))
    tick = Throttled(progress)
    records = []
    method = ""
    for i, s in enumerate(samples):
        needle = needles[s.needle]
        frames = assemble_frames(haystack, needle.image, s)
        out = score_sample(model, frames, needle, cfg.max_new_tokens)
        method = out["method"]
        records.append({
            "frame_count": s.frame_count, "depth": s.depth, "needle": needle.id, "position": s.position,
            "answer": needle.answer, "prediction": out["prediction"],
            "normalized_prediction": normalize_answer(out["prediction"]),
            "correct": out["correct"], "contains": out["contains"],
        })
        tick(i + 1, len(samples), f"niah N={s.frame_count} depth={s.depth:g}")
    return NiahResult(
        config=cfg.to_dict(), needles=[n.meta() for n in needles], records=records,
        haystack_frames=len(haystack), haystack_repeated=len(haystack) < max(cfg.frame_counts) - 1,
        method=method,
    )


def heatmap_png(result: NiahResult, title: str | None = None) -> bytes:
    """The accuracy grid as a heatmap PNG (x: frame count, y: depth), LongVA-style colours."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    g = result.grid()
    ns, ds = result.frame_counts, result.depths
    data = np.array([[g[(n, d)] for n in ns] for d in ds], dtype=float)
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    fig = Figure(figsize=(max(4.0, 0.9 * len(ns) + 2.5), max(3.0, 0.5 * len(ds) + 2.0)), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(data, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(ns)), [str(n) for n in ns])
    ax.set_yticks(range(len(ds)), [f"{d:g}" for d in ds])
    ax.set_xlabel("Frames in context")
    ax.set_ylabel("Needle depth (%)")
    for i in range(len(ds)):
        for j in range(len(ns)):
            ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8, color="black")
    fig.colorbar(im, ax=ax, label="accuracy")
    ax.set_title(title or f"V-NIAH accuracy {result.accuracy:.2f}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_niah_outputs(result: NiahResult, out_dir: str, title: str | None = None) -> dict[str, str]:
    """Write heatmap.png, summary.md and results.json under `out_dir` (local or fsspec URL), each
    atomically, results.json last (its presence marks a complete set). Returns their paths."""
    paths = {
        "results": lio.join(out_dir, "results.json"),
        "heatmap": lio.join(out_dir, "heatmap.png"),
        "summary": lio.join(out_dir, "summary.md"),
    }
    lio.write_bytes(paths["heatmap"], heatmap_png(result, title))
    lio.write_text(paths["summary"], f"# V-NIAH\n\naccuracy: {result.accuracy:.4f} "
                   f"({len(result.records)} samples, {result.method})\n\n{result.to_markdown()}\n")
    lio.write_json(paths["results"], result.to_json())  # last: marks a complete set of outputs
    return paths


def read_niah_results(out_dir: str) -> NiahResult:
    return NiahResult.from_json(lio.read_json(lio.join(out_dir, "results.json")))

