"""Clip captions: frames of each clip -> one VLM caption per clip.

CLIP_CAPTIONS (``captions/<key>.parquet``, one row per clip of ``clips/<key>.parquet``, in clip order)

| column | type | meaning |
|---|---|---|
| clip_index | int32 | CLIPS.index |
| start_s | float64 | clip start, seconds in the video |
| end_s | float64 | clip end, seconds |
| num_frames | int32 | frames given to the model (from clip_frames) |
| caption | string | the caption ("" when not ok; kept as written when rejected for its language) |
| ok | bool | usable caption |
| error | string, null | why not ok: "<kind>: <reason>" (kinds in `curation.captioning.types`) |
| flags | list<string> | non-fatal notes, e.g. "truncated" (over `max_chars`, cut at a word boundary) |
| tokens | int32 | generated tokens |
| model | string | model id (local path / hub id, or name@endpoint) |
| prompt_version | string | prompt tag, e.g. clip_caption.v1-1a2b3c4d ("" for annotations) |
| source | string | "model" (the VLM wrote it) or "annotation" (a human segment caption from the video's sidecar) |
| on_screen_text | string, null | text shown in the clip, when the annotation says (`curation.captioning.sidecar`) |

For an annotated row `model` names the sidecar and its content hash (`annotation:v01.json@<sha256[:16]>`).
Tables written before `source` existed read as all-"model" (`caption_sources`).

Stages 1-3 of training read (frames from clip_frames, caption) pairs from rows with ok = true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import pyarrow as pa

from .prompts import Prompt, load_prompt
from .quality import enforce_length, language_problem
from .sidecar import ANNOTATION, MIN_COVERAGE, MODEL, Sidecar, match_clips
from .types import EMPTY_INPUT, REJECTED, ChatBackend, ChatRequest

CAPTIONS_SCHEMA = pa.schema([
    pa.field("clip_index", pa.int32(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("num_frames", pa.int32(), nullable=False),
    pa.field("caption", pa.string(), nullable=False),
    pa.field("ok", pa.bool_(), nullable=False),
    pa.field("error", pa.string(), nullable=True),
    pa.field("flags", pa.list_(pa.string()), nullable=False),
    pa.field("tokens", pa.int32(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("on_screen_text", pa.string(), nullable=True),
])


@dataclass
class ClipInput:
    """What the captioner needs of one clip: its index, time span and frames (PIL images or JPEG bytes)."""

    clip_index: int
    start_s: float
    end_s: float
    frames: Sequence = ()


@dataclass
class CaptionResult:
    clip_index: int
    start_s: float
    end_s: float
    num_frames: int
    caption: str
    ok: bool
    error: str | None
    flags: list[str] = field(default_factory=list)
    tokens: int = 0
    model: str = ""
    prompt_version: str = ""
    error_kind: str | None = None
    source: str = MODEL
    on_screen_text: str | None = None

    def row(self) -> dict:
        return {n: getattr(self, n) for n in CAPTIONS_SCHEMA.names}


class ClipCaptioner:
    """Captions clips with any `ChatBackend` (local VLM or OpenAI-compatible server).

    Policy: a clip without frames is not sent (error "empty_input"); a backend failure is recorded
    with its kind; an empty reply or one not in `language`'s script is rejected (ok = false, the text
    kept for inspection); a reply over `max_chars` is cut at a word boundary and flagged "truncated".
    """

    def __init__(self, backend: ChatBackend, *, prompt: Prompt | None = None, max_new_tokens: int = 64,
                 max_chars: int = 500, language: str = "en", max_frames: int = 8):
        self.backend = backend
        self.prompt = prompt or load_prompt("clip_caption", "v1")
        self.max_new_tokens = int(max_new_tokens)
        self.max_chars = int(max_chars)
        self.language = language
        self.max_frames = int(max_frames)

    def request(self, clip: ClipInput) -> ChatRequest:
        frames = list(clip.frames)
        if len(frames) > self.max_frames:  # uniform subset, first and last kept
            step = (len(frames) - 1) / (self.max_frames - 1) if self.max_frames > 1 else 0
            frames = [frames[round(i * step)] for i in range(self.max_frames)]
        text = self.prompt.render(num_frames=len(frames), duration_s=clip.end_s - clip.start_s,
                                  start_s=clip.start_s, end_s=clip.end_s)
        content = [{"type": "image", "image": f} for f in frames] + [{"type": "text", "text": text}]
        return ChatRequest(messages=[{"role": "user", "content": content}], max_new_tokens=self.max_new_tokens)

    def caption_clips(self, frames_by_clip: Sequence[ClipInput] | Mapping[int, Sequence]) -> list[CaptionResult]:
        """One CaptionResult per clip, in input order. A Mapping {clip_index: frames} is accepted too
        (times unknown: 0)."""
        clips = (
            [ClipInput(int(k), 0.0, 0.0, v) for k, v in frames_by_clip.items()]
            if isinstance(frames_by_clip, Mapping)
            else list(frames_by_clip)
        )
        base = {"model": self.backend.model_id, "prompt_version": self.prompt.tag}
        results: list[CaptionResult | None] = [None] * len(clips)
        todo = []
        for i, c in enumerate(clips):
            if not len(c.frames):
                results[i] = CaptionResult(c.clip_index, c.start_s, c.end_s, 0, "", False,
                                           f"{EMPTY_INPUT}: clip {c.clip_index} has no frames", [], 0,
                                           error_kind=EMPTY_INPUT, **base)
            else:
                todo.append(i)
        replies = self.backend.chat([self.request(clips[i]) for i in todo]) if todo else []
        for i, rep in zip(todo, replies):
            c = clips[i]
            n = min(len(c.frames), self.max_frames)
            if not rep.ok:
                results[i] = CaptionResult(c.clip_index, c.start_s, c.end_s, n, "", False,
                                           f"{rep.error_kind}: {rep.error}", [], 0, error_kind=rep.error_kind, **base)
                continue
            text = " ".join(rep.text.split())
            flags = []
            if rep.finish_reason == "length":
                flags.append("max_new_tokens")
            text, cut = enforce_length(text, self.max_chars)
            if cut:
                flags.append("truncated")
            problem = "empty caption" if not text else language_problem(text, self.language)
            results[i] = CaptionResult(
                c.clip_index, c.start_s, c.end_s, n, text, problem is None,
                f"{REJECTED}: {problem}" if problem else None, flags, int(rep.completion_tokens),
                error_kind=REJECTED if problem else None, **base,
            )
        return results  # type: ignore[return-value]


def clip_inputs(clips, frames_table: pa.Table | None) -> list[ClipInput]:
    """ClipInputs (JPEG bytes, in frame order) for `clips` (curation.clips.Clip) from a CLIP_FRAMES table.
    Every clip is returned; one without rows in the table gets no frames."""
    by_clip: dict[int, list[tuple[int, bytes]]] = {}
    if frames_table is not None and frames_table.num_rows:
        d = frames_table.select(["clip_index", "frame_index_in_clip", "jpeg"]).to_pydict()
        for ci, fi, jpg in zip(d["clip_index"], d["frame_index_in_clip"], d["jpeg"]):
            by_clip.setdefault(int(ci), []).append((int(fi), jpg))
    return [
        ClipInput(int(c.index), float(c.start_s), float(c.end_s), [j for _, j in sorted(by_clip.get(int(c.index), []))])
        for c in clips
    ]


def results_to_table(results: Sequence[CaptionResult]) -> pa.Table:
    return pa.Table.from_pylist([r.row() for r in results], schema=CAPTIONS_SCHEMA)


def annotation_result(clip: ClipInput, segment, sidecar: Sidecar) -> CaptionResult:
    """The caption row of a clip covered by a sidecar segment (kept as written: no length or language rule)."""
    return CaptionResult(clip.clip_index, clip.start_s, clip.end_s, len(clip.frames), segment.caption, True, None,
                         [], 0, sidecar.tag, "", source=ANNOTATION, on_screen_text=segment.text)


def caption_video(captioner: ClipCaptioner | Callable[[], ClipCaptioner], clips, frames_table: pa.Table | None,
                  sidecar: Sidecar | None = None) -> pa.Table:
    """The CLIP_CAPTIONS table of one video. Clips covered by a `sidecar` segment take its caption; the
    others are captioned by the VLM. `captioner` may be a factory, called only if some clip needs it."""
    inputs = clip_inputs(clips, frames_table)
    matched = match_clips(sidecar.segments, [(c.start_s, c.end_s) for c in inputs]) if sidecar else [None] * len(inputs)
    todo = [c for c, m in zip(inputs, matched) if m is None]
    if todo and not isinstance(captioner, ClipCaptioner):
        captioner = captioner()
    by_model = iter(captioner.caption_clips(todo) if todo else [])
    return results_to_table([annotation_result(c, m, sidecar) if m is not None else next(by_model)
                             for c, m in zip(inputs, matched)])


def text_free_spans(table: pa.Table | None) -> list[tuple[float, float]] | None:
    """Spans known to show no on-screen text, or None when the video has no on-screen-text annotation at
    all (then nothing is known to show text). A V-NIAH haystack frame must lie in one of these spans, or a
    readable text in it could answer the needle's question.

    A clip's annotation is the segment covering at least `MIN_COVERAGE` of it (`match_clips`), so up to
    the rest may belong to a neighbouring segment, at either end; the part of a text-free annotated clip
    that its segment surely covers is the clip without (1 - MIN_COVERAGE) of its length at each end.
    Clips captioned by the model (no segment covers enough: they may straddle a text shot) are left out."""
    if table is None or "on_screen_text" not in table.column_names:
        return None
    d = table.select(["start_s", "end_s", "on_screen_text"]).to_pydict()
    if not any(d["on_screen_text"]):
        return None
    margin = 1.0 - MIN_COVERAGE
    return [(s + margin * (e - s), e - margin * (e - s))
            for s, e, t, src in zip(d["start_s"], d["end_s"], d["on_screen_text"], caption_sources(table))
            if not t and src == ANNOTATION]


def text_free_indices(table: pa.Table | None, pts_s: Sequence[float]) -> list[int]:
    """Indices of the frames (presentation times `pts_s`) that `text_free_spans` allows."""
    spans = text_free_spans(table)
    return [i for i, t in enumerate(pts_s) if spans is None or any(s <= t < e for s, e in spans)]


def caption_sources(table: pa.Table) -> list[str]:
    """Per row: "annotation" or "model" (tables from before the `source` column are all "model")."""
    if "source" in table.column_names:
        return [str(v) for v in table.column("source").to_pylist()]
    return [MODEL] * table.num_rows
