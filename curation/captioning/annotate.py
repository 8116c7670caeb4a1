"""Video-level summary and question-answer instructions from time-stamped clip captions.

An LLM (any `ChatBackend`: local causal LM or OpenAI-compatible server) reads the video's clip
captions and replies in JSON that must satisfy the prompt's JSON schema (`curation/prompts/*.schema.json`).
The schema is specialised per video (timestamps bounded by the video's duration) and enforced while
decoding (grammar-constrained locally, `response_format` json_schema on servers); every reply is
then parsed and validated with `jsonschema` and with content rules (non-empty text in the target
language, start_s <= end_s <= duration). An invalid reply is retried (greedy first, then sampling
with a new seed) up to `max_attempts` times; after that the video's result is a failure record
(`ok: false`, `error`, the reasons per attempt), never an exception.

SUMMARY (``summaries/<key>.json``)

    {"key", "ok", "error", "error_kind", "title", "summary", "duration_s", "num_clips",
     "num_captions_used", "model", "prompt_version", "attempts", "attempt_errors", "tokens"}

INSTRUCTIONS (``instructions/<key>.jsonl``, one LLaVA conversation record per line; see
`instruction_records`) and a report beside it (``instructions/<key>.report.json``).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jsonschema

from .prompts import Prompt, load_prompt
from .quality import language_problem
from .types import CONFIG_ERROR, EMPTY_INPUT, INVALID_OUTPUT, UNAVAILABLE, ChatBackend, ChatRequest

QUESTION_TYPES = ("Spatial", "Attribute", "Action", "Object", "OCR", "Synopsis", "Temporal")
CAPTION_QUESTION = "Describe the video in detail."
CAPTION_TYPE = "Caption"
VIDEO_TOKEN = "<video>"


@dataclass
class TimedCaption:
    clip_index: int
    start_s: float
    end_s: float
    caption: str


def captions_from_table(table) -> list[TimedCaption]:
    """Usable (ok) captions of a CLIP_CAPTIONS table, in time order."""
    d = table.select(["clip_index", "start_s", "end_s", "caption", "ok"]).to_pydict()
    caps = [
        TimedCaption(int(ci), float(s), float(e), c)
        for ci, s, e, c, ok in zip(d["clip_index"], d["start_s"], d["end_s"], d["caption"], d["ok"])
        if ok and c
    ]
    return sorted(caps, key=lambda c: (c.start_s, c.clip_index))


def format_captions(captions: Sequence[TimedCaption], max_chars: int = 12000) -> tuple[str, int]:
    """'[12.0-20.0 s] caption' lines within `max_chars`; returns (text, number of captions used).
    When over budget, captions are dropped uniformly over time (never just the tail)."""
    lines = [f"[{c.start_s:.1f}-{c.end_s:.1f} s] {c.caption}" for c in captions]
    keep = list(range(len(lines)))
    while keep and sum(len(lines[i]) + 1 for i in keep) > max_chars:
        keep = keep[::2] if len(keep) > 1 else []
    return "\n".join(lines[i] for i in keep), len(keep)


def specialise_qa_schema(schema: dict, duration_s: float) -> dict:
    """The QA schema with timestamps bounded by the video's duration (whole seconds, rounded up)."""
    s = copy.deepcopy(schema)
    props = s["properties"]["qa"]["items"]["properties"]
    top = max(1, int(math.ceil(duration_s)))
    for k in ("start_s", "end_s"):
        if k in props:
            props[k]["maximum"] = top
    return s


@dataclass
class StructuredResult:
    value: Any
    attempts: int
    errors: list[str]
    tokens: int
    error_kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


class VideoAnnotator:
    def __init__(
        self,
        backend: ChatBackend,
        *,
        summary_prompt: Prompt | None = None,
        qa_prompt: Prompt | None = None,
        summary_max_new_tokens: int = 256,
        qa_max_new_tokens: int = 1024,
        max_attempts: int = 3,
        retry_temperature: float = 0.8,
        language: str = "en",
        max_caption_chars: int = 12000,
    ):
        self.backend = backend
        self.summary_prompt = summary_prompt or load_prompt("video_summary", "v1")
        self.qa_prompt = qa_prompt or load_prompt("video_qa", "v1")
        for p in (self.summary_prompt, self.qa_prompt):
            if p.schema is None:
                raise ValueError(f"prompt {p.name}.{p.version} has no JSON schema file")
            jsonschema.Draft202012Validator.check_schema(p.schema)
        self.summary_max_new_tokens = int(summary_max_new_tokens)
        self.qa_max_new_tokens = int(qa_max_new_tokens)
        self.max_attempts = max(1, int(max_attempts))
        self.retry_temperature = float(retry_temperature)
        self.language = language
        self.max_caption_chars = int(max_caption_chars)

    # -- one structured exchange with retries ---------------------------------------------------
    def structured(self, prompt_text: str, schema: dict, name: str, max_new_tokens: int,
                   check: Callable[[Any], tuple[Any, str | None]]) -> StructuredResult:
        """Ask until the reply parses, validates against `schema` and passes `check`
        (which returns (cleaned value, problem or None))."""
        validator = jsonschema.Draft202012Validator(schema)
        errors: list[str] = []
        tokens = 0
        kind = INVALID_OUTPUT
        for attempt in range(self.max_attempts):
            req = ChatRequest(
                messages=[{"role": "user", "content": prompt_text}],
                max_new_tokens=max_new_tokens,
                json_schema=schema,
                schema_name=name,
                temperature=0.0 if attempt == 0 else self.retry_temperature,
                seed=None if attempt == 0 else 1000 + attempt,
            )
            rep = self.backend.chat([req])[0]
            tokens += rep.completion_tokens
            if not rep.ok:
                errors.append(f"attempt {attempt + 1}: {rep.error_kind}: {rep.error}")
                kind = rep.error_kind or INVALID_OUTPUT
                if rep.error_kind in (UNAVAILABLE, CONFIG_ERROR):
                    break  # retried by the backend already / will fail the same way again
                continue
            kind = INVALID_OUTPUT
            try:
                obj = json.loads(rep.text)
            except json.JSONDecodeError as e:
                why = "ran out of tokens" if rep.finish_reason == "length" else "unparseable"
                errors.append(f"attempt {attempt + 1}: {why} JSON ({e.msg} at char {e.pos}): {rep.text[:120]!r}")
                continue
            problems = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
            if problems:
                p = problems[0]
                where = "/".join(map(str, p.absolute_path)) or "(root)"
                errors.append(f"attempt {attempt + 1}: schema-invalid at {where}: {p.message[:160]}")
                continue
            value, problem = check(obj)
            if problem:
                errors.append(f"attempt {attempt + 1}: {problem}")
                continue
            return StructuredResult(value, attempt + 1, errors, tokens)
        return StructuredResult(None, len(errors), errors, tokens, kind)

    # -- summary ---------------------------------------------------------------------------------
    def summarize(self, key: str, captions: Sequence[TimedCaption], duration_s: float,
                  num_clips: int | None = None) -> dict:
        rec = {
            "key": key, "ok": False, "error": None, "error_kind": None, "title": "", "summary": "",
            "duration_s": float(duration_s), "num_clips": int(num_clips if num_clips is not None else len(captions)),
            "num_captions_used": 0, "model": self.backend.model_id, "prompt_version": self.summary_prompt.tag,
            "attempts": 0, "attempt_errors": [], "tokens": 0,
        }
        if not captions:
            rec.update(error=f"{key}: no usable clip captions", error_kind=EMPTY_INPUT)
            return rec
        text, used = format_captions(captions, self.max_caption_chars)
        schema = self.summary_prompt.schema
        prompt = self.summary_prompt.render(duration_s=duration_s, captions=text, schema=json.dumps(schema))

        def check(obj):
            s = " ".join(obj["summary"].split())
            t = " ".join(obj["title"].split())
            if not s or not t:
                return None, "empty title or summary"
            lang = language_problem(s, self.language)
            return ({"title": t, "summary": s}, None) if lang is None else (None, lang)

        res = self.structured(prompt, schema, "video_summary", self.summary_max_new_tokens, check)
        rec.update(num_captions_used=used, attempts=res.attempts, attempt_errors=res.errors, tokens=res.tokens)
        if res.ok:
            rec.update(ok=True, **res.value)
        else:
            last = res.errors[-1] if res.errors else ""
            rec.update(error=f"{key}: no valid summary after {res.attempts} attempt(s): {last}",
                       error_kind=res.error_kind)
        return rec

    # -- question-answer pairs ---------------------------------------------------------------------
    def question_answers(self, key: str, captions: Sequence[TimedCaption], duration_s: float,
                         summary: str = "") -> dict:
        out = {"key": key, "ok": False, "error": None, "error_kind": None, "qa": [], "rejected": [],
               "model": self.backend.model_id, "prompt_version": self.qa_prompt.tag, "attempts": 0,
               "attempt_errors": [], "tokens": 0, "duration_s": float(duration_s)}
        if not captions:
            out.update(error=f"{key}: no usable clip captions", error_kind=EMPTY_INPUT)
            return out
        text, _ = format_captions(captions, self.max_caption_chars)
        schema = specialise_qa_schema(self.qa_prompt.schema, duration_s)
        prompt = self.qa_prompt.render(duration_s=duration_s, duration_int=int(math.ceil(duration_s)),
                                       captions=text, summary=summary or "(none)", schema=json.dumps(schema))
        rejected_last: list[dict] = []

        def check(obj):
            good, bad = [], []
            for item in obj["qa"]:
                q, a = " ".join(item["question"].split()), " ".join(item["answer"].split())
                why = None
                if not q or not a:
                    why = "empty question or answer"
                elif not (0 <= item["start_s"] <= item["end_s"] <= duration_s + 1):
                    why = f"time span [{item['start_s']}, {item['end_s']}] outside [0, {duration_s:.1f}] or reversed"
                else:
                    why = language_problem(q + " " + a, self.language)
                if why:
                    bad.append({**item, "reason": why})
                else:
                    good.append({**item, "question": q, "answer": a})
            rejected_last[:] = bad
            if not good:
                first = bad[0]["reason"] if bad else "none"
                return None, f"no usable question-answer pair ({len(bad)} rejected: {first})"
            return good, None

        res = self.structured(prompt, schema, "video_qa", self.qa_max_new_tokens, check)
        out.update(attempts=res.attempts, attempt_errors=res.errors, tokens=res.tokens, rejected=list(rejected_last))
        if res.ok:
            out.update(ok=True, qa=res.value)
        else:
            out.update(error=f"{key}: no valid question-answer reply after {res.attempts} attempt(s): "
                             f"{res.errors[-1] if res.errors else ''}", error_kind=res.error_kind)
        return out


def instruction_records(key: str, summary: dict, qa: dict, *, video: str, frames_path: str,
                        duration_s: float) -> list[dict]:
    """LLaVA conversation records of one video (the long-video SFT format, stage 5).

    One captioning record (the summary as the answer to "Describe the video in detail.",
    question_type "Caption") when the summary is ok, and one record per question-answer pair:

        {"id": "<key>-qa-003",
         "video": "<source url of the video, or its key>",
         "video_key": "<partition key>",
         "frames": {"layer": "video_frames", "path": "<video_frames/<key>.parquet>",
                    "start_s": 12, "end_s": 30, "duration_s": 61.2},
         "conversations": [{"from": "human", "value": "<video>\\nWhat colour is the car?"},
                           {"from": "gpt", "value": "Red."}],
         "question_type": "Attribute",
         "model": "...", "prompt_version": "video_qa.v1-..."}

    `<video>` stands for the whole video's frames (all rows of `frames.path`, sampled uniformly by
    the `video_frames` layer); `start_s`/`end_s` are the span the question is about (the whole video
    for the captioning record).
    """
    recs = []

    def frames(s, e):
        return {"layer": "video_frames", "path": frames_path, "start_s": s, "end_s": e, "duration_s": float(duration_s)}

    if summary.get("ok"):
        recs.append({
            "id": f"{key}-caption",
            "video": video,
            "video_key": key,
            "frames": frames(0.0, float(duration_s)),
            "conversations": [
                {"from": "human", "value": f"{VIDEO_TOKEN}\n{CAPTION_QUESTION}"},
                {"from": "gpt", "value": summary["summary"]},
            ],
            "question_type": CAPTION_TYPE,
            "model": summary.get("model", ""),
            "prompt_version": summary.get("prompt_version", ""),
        })
    for i, item in enumerate(qa.get("qa", []) if qa.get("ok") else []):
        recs.append({
            "id": f"{key}-qa-{i:03d}",
            "video": video,
            "video_key": key,
            "frames": frames(float(item["start_s"]), float(item["end_s"])),
            "conversations": [
                {"from": "human", "value": f"{VIDEO_TOKEN}\n{item['question']}"},
                {"from": "gpt", "value": item["answer"]},
            ],
            "question_type": item["question_type"],
            "model": qa.get("model", ""),
            "prompt_version": qa.get("prompt_version", ""),
        })
    return recs


class ServiceFailure(RuntimeError):
    """The model service failed the whole request (unavailable or misconfigured), not the video: the caller
    retries or stops instead of recording the video as bad."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def raise_for_service(reply: dict, what: str) -> None:
    """Raise ServiceFailure for a summary / QA reply that failed for infrastructure reasons."""
    if reply.get("error_kind") in (UNAVAILABLE, CONFIG_ERROR):
        raise ServiceFailure(f"{what}: {reply.get('error')}", retryable=reply["error_kind"] == UNAVAILABLE)


def instructions_report(qa: dict, summary: dict, records: Sequence[dict]) -> dict:
    """The per-video report written beside the instruction records (``instructions/<key>.report.json``)."""
    report = {k: qa[k] for k in ("key", "ok", "error", "error_kind", "rejected", "attempts", "attempt_errors",
                                 "tokens", "model", "prompt_version", "duration_s")}
    report.update(summary_ok=bool(summary.get("ok")), num_records=len(records),
                  question_types=question_type_coverage(records))
    return report


def question_type_coverage(records: Sequence[dict]) -> dict[str, int]:
    counts = {t: 0 for t in QUESTION_TYPES}
    for r in records:
        if r.get("question_type") in counts:
            counts[r["question_type"]] += 1
    return counts


def to_jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def read_jsonl(text: str, source: str = "jsonl") -> list[dict]:
    from longvila.errors import InputError

    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InputError(source, f"line {n} is not JSON: {e.msg}") from e
    return out
