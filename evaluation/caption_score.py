"""Long-video caption score: an LLM judge (Video-ChatGPT style) plus reference-based similarity.

For every video, the evaluated model's caption is compared with a reference caption (for instance
the video summary written by the captioning pipeline). A judge LLM scores three criteria, each from
1 to 5, with one prompt per criterion (as Video-ChatGPT does):

| criterion | question to the judge |
|---|---|
| correctness | are the caption's facts consistent with the reference (no invented objects/events)? |
| detail | does it cover the reference's content completely and specifically? |
| context | does it follow the overall storyline/context of the reference, in order? |

The judge is asked for a JSON object `{"score": <1..5>, "reason": "..."}`; a JSON schema is passed
to backends that support structured output. Replies are parsed robustly (code fences, leading prose,
single-quoted Python dicts, "score: 4" text, integer-valued strings and floats such as 4.0); a reply
without a score, with a non-integer or out-of-range score is invalid and the prompt is retried up to
`retries` more times. A criterion still invalid after the retries is recorded as invalid (with the
raw replies and the reason) and left out of the means, and the count of invalid scores is reported.

A judge is anything with one of these interfaces (see `as_judge`):
* a callable `judge(prompt: str) -> str` (tests, scripts, any LLM wrapper);
* an object with `generate(prompt, schema=...)` / `complete(prompt)` returning text or a parsed dict
  (the captioning engineer's local transformers and OpenAI-compatible backends).
"""

from __future__ import annotations

import ast
import os
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from longvila import io as lio
from longvila.errors import InputError
from longvila.progress import ProgressFn, Throttled

from .similarity import caption_similarity

__all__ = [
    "CRITERIA",
    "SCORE_SCHEMA",
    "JudgeReplyError",
    "judge_prompt",
    "parse_judge_reply",
    "as_judge",
    "score_caption",
    "CaptionItem",
    "evaluate_captions",
    "CaptionScoreResult",
    "load_references",
    "write_caption_outputs",
    "CAPTION_PROMPT",
    "make_judge",
    "PROMPT_VERSION",
]

PROMPT_VERSION = "caption-judge-v1"
CAPTION_PROMPT = "Describe this video in detail: the scenes, objects, people, actions and their order."
MIN_SCORE, MAX_SCORE = 1, 5

SCORE_SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": MIN_SCORE, "maximum": MAX_SCORE},
        "reason": {"type": "string"},
    },
    "required": ["score"],
    "additionalProperties": False,
}

_INSTRUCTIONS = {
    "correctness": (
        "You judge the factual accuracy of a generated video caption against a reference caption of "
        "the same video. Check that every object, person, action, place and event in the generated "
        "caption is consistent with the reference; invented or contradicting facts lower the score. "
        "Paraphrases and synonyms are fine. Score 1 (mostly wrong) to 5 (fully consistent)."
    ),
    "detail": (
        "You judge how detailed and complete a generated video caption is compared with a reference "
        "caption of the same video. Check that it covers the reference's main content and specifics "
        "(objects, attributes, actions, scene changes) rather than being generic or partial. Score 1 "
        "(generic or missing most content) to 5 (complete and specific)."
    ),
    "context": (
        "You judge whether a generated video caption captures the overall context and storyline of "
        "the video described by a reference caption: the setting, the sequence of events and how "
        "they connect, without out-of-context or misordered statements. Score 1 (misses the context) "
        "to 5 (fully in context)."
    ),
}
CRITERIA = tuple(_INSTRUCTIONS)


def judge_prompt(criterion: str, reference: str, candidate: str, question: str = CAPTION_PROMPT) -> str:
    if criterion not in _INSTRUCTIONS:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
    return (
        f"{_INSTRUCTIONS[criterion]}\n\n"
        f"Instruction given to the model: {question}\n"
        f"Reference caption: {reference.strip()}\n"
        f"Generated caption: {candidate.strip()}\n\n"
        f"Reply with only a JSON object of the form {{\"score\": <integer {MIN_SCORE}-{MAX_SCORE}>, "
        f"\"reason\": \"<one sentence>\"}}."
    )


class JudgeReplyError(ValueError):
    """A judge reply that holds no valid score (the message says why)."""


_FENCE = re.compile(r"```(?:json|python)?\s*(.*?)```", re.S | re.I)
_SCORE_TEXT = re.compile(r"[\"']?score[\"']?\s*[:=]\s*[\"']?(-?\d+(?:\.\d+)?)", re.I)


def _objects(text: str) -> list[str]:
    """Balanced {...} substrings, outermost first, in order of appearance."""
    out, depth, start = [], 0, None
    in_str: str | None = None
    esc = False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == in_str:
                in_str = None
            continue
        if ch in "\"'" and depth > 0:
            in_str = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0 and start is not None:
                out.append(text[start : i + 1])
    return out


def _check_score(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        raise JudgeReplyError(f"score is not a number: {value!r}")
    if isinstance(value, str):
        v = value.strip()
        if not re.fullmatch(r"-?\d+(?:\.0+)?", v):
            raise JudgeReplyError(f"score is not an integer: {value!r}")
        value = float(v)
    if not isinstance(value, (int, float)):
        raise JudgeReplyError(f"score is not a number: {value!r}")
    if float(value) != int(value):
        raise JudgeReplyError(f"score is not an integer: {value!r}")
    score = int(value)
    if not MIN_SCORE <= score <= MAX_SCORE:
        raise JudgeReplyError(f"score {score} is outside {MIN_SCORE}..{MAX_SCORE}")
    return score


def parse_judge_reply(reply: Any) -> dict:
    """{"score": int 1..5, "reason": str} from a judge reply (text or an already-parsed dict).

    Raises JudgeReplyError when the reply holds no valid score."""
    if isinstance(reply, dict):
        obj = reply
    else:
        text = "" if reply is None else str(reply)
        if not text.strip():
            raise JudgeReplyError("empty reply")
        candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
        # the first top-level object that has a score field; else the first object at all
        obj, first = None, None
        for cand in candidates:
            for chunk in _objects(cand):
                parsed = None
                for loader in (json.loads, ast.literal_eval):
                    try:
                        parsed = loader(chunk)
                    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                        continue
                    break
                if not isinstance(parsed, dict):
                    continue
                first = first if first is not None else parsed
                if any(str(k).strip().lower() == "score" for k in parsed):
                    obj = parsed
                    break
            if obj is not None:
                break
        obj = obj if obj is not None else first
        if obj is None:
            m = _SCORE_TEXT.search(text)
            if not m:
                raise JudgeReplyError("no JSON object and no 'score: N' in the reply")
            obj = {"score": m.group(1)}
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    if "score" not in lowered:
        raise JudgeReplyError(f"reply object has no 'score' field (fields: {sorted(lowered)})")
    score = _check_score(lowered["score"])
    reason = lowered.get("reason", lowered.get("explanation", ""))
    return {"score": score, "reason": "" if reason is None else str(reason)}


def as_judge(backend: Any, max_new_tokens: int = 96) -> Callable[[str], Any]:
    """Adapt a judge backend to `judge(prompt) -> str | dict`.

    Accepts a `curation.captioning` ChatBackend (`chat([ChatRequest]) -> [ChatReply]`, asked for
    structured output with SCORE_SCHEMA), a plain callable, or an object with
    `generate_json(prompt, schema)`, `generate(prompt, schema=...)`, `complete(prompt)`."""
    chat = getattr(backend, "chat", None)
    if callable(chat):
        from curation.captioning.types import ChatRequest

        def _chat(prompt: str) -> str:
            req = ChatRequest(messages=[{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens,
                              json_schema=SCORE_SCHEMA, schema_name="judge_score", temperature=0.0)
            reply = chat([req])[0]
            if not reply.ok:
                raise RuntimeError(f"{reply.error_kind or 'error'}: {reply.error}")
            return reply.text

        return _chat
    for name in ("generate_json", "generate_structured"):
        fn = getattr(backend, name, None)
        if callable(fn):
            return lambda prompt, _fn=fn: _fn(prompt, SCORE_SCHEMA)
    gen = getattr(backend, "generate", None)
    if callable(gen):
        def _gen(prompt: str, _g=gen) -> Any:
            try:
                return _g(prompt, schema=SCORE_SCHEMA)
            except TypeError:
                return _g(prompt)
        return _gen
    comp = getattr(backend, "complete", None)
    if callable(comp):
        return comp
    if callable(backend):
        return backend
    raise TypeError(f"{type(backend).__name__} is not a judge: need a callable or generate()/complete()")


def score_caption(judge: Callable[[str], Any], reference: str, candidate: str, retries: int = 2,
                  question: str = CAPTION_PROMPT) -> dict:
    """Judge one caption on every criterion. Returns, per criterion, {"score", "reason",
    "attempts", "valid", "error", "replies"} (score None when invalid after all attempts)."""
    out = {}
    for crit in CRITERIA:
        prompt = judge_prompt(crit, reference, candidate, question)
        replies, error = [], None
        entry = {"score": None, "reason": "", "valid": False}
        for _ in range(retries + 1):
            try:
                reply = judge(prompt)
            except Exception as exc:  # a failing backend call counts as an invalid attempt
                replies.append(f"<error: {type(exc).__name__}: {exc}>")
                error = f"judge call failed: {type(exc).__name__}: {exc}"
                continue
            replies.append(reply if isinstance(reply, str) else json.dumps(reply, default=str))
            try:
                parsed = parse_judge_reply(reply)
            except JudgeReplyError as exc:
                error = str(exc)
                continue
            entry = {"score": parsed["score"], "reason": parsed["reason"], "valid": True}
            error = None
            break
        entry.update({"attempts": len(replies), "error": error, "replies": [r[:2000] for r in replies]})
        out[crit] = entry
    return out


@dataclass
class CaptionItem:
    video_id: str
    reference: str
    candidate: str | None = None  # filled by the evaluated model when None
    video: str | None = None  # video path, needed when candidate is None


@dataclass
class CaptionScoreResult:
    records: list[dict]
    judge_name: str = ""
    prompt_version: str = PROMPT_VERSION

    def means(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for c in CRITERIA:
            vals = [r["judge"][c]["score"] for r in self.records if r["judge"] and r["judge"][c]["valid"]]
            out[c] = sum(vals) / len(vals) if vals else None
        valid = [v for v in out.values() if v is not None]
        out["average"] = sum(valid) / len(valid) if len(valid) == len(CRITERIA) else None
        return out

    def similarity_means(self) -> dict[str, float]:
        keys = self.records[0]["similarity"].keys() if self.records else []
        return {k: sum(r["similarity"][k] for r in self.records) / len(self.records) for k in keys}

    @property
    def invalid(self) -> int:
        return sum(1 for r in self.records if r["judge"] for c in CRITERIA if not r["judge"][c]["valid"])

    def summary(self) -> dict:
        return {
            "videos": len(self.records),
            "judge": self.judge_name,
            "prompt_version": self.prompt_version,
            "judge_scores": self.means(),
            "invalid_judgements": self.invalid,
            "judged": sum(1 for r in self.records if r["judge"]),
            "similarity": self.similarity_means(),
        }

    def to_markdown(self) -> str:
        m, s = self.means(), self.similarity_means()

        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        lines = ["| measure | value |", "|---|---|"]
        lines += [f"| judge {k} (1-5) | {f(v)} |" for k, v in m.items()]
        lines.append(f"| invalid judgements | {self.invalid} / {len(self.records) * len(CRITERIA)} |")
        lines += [f"| {k} | {v:.3f} |" for k, v in s.items()]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"summary": self.summary(), "records": self.records}


def load_references(path: str) -> list[CaptionItem]:
    """Reference captions from JSON / JSONL: records with video_id, reference (or caption/summary),
    optional video (path) and candidate."""
    src = str(path)
    try:
        text = lio.read_bytes(src).decode("utf-8", "replace")
    except FileNotFoundError as exc:
        raise InputError(src, "reference file does not exist") from exc
    try:
        if src.endswith(".jsonl"):
            recs = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            recs = json.loads(text)
            if isinstance(recs, dict):
                recs = recs.get("references") or recs.get("data") or []
    except json.JSONDecodeError as exc:
        raise InputError(src, f"not JSON: {exc.msg}") from exc
    items = []
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            raise InputError(src, f"record {i} is not an object")
        ref = r.get("reference") or r.get("caption") or r.get("summary")
        vid = r.get("video_id") or r.get("id")
        if not ref or not vid:
            raise InputError(src, f"record {i} needs video_id and reference")
        items.append(CaptionItem(video_id=str(vid), reference=str(ref), candidate=r.get("candidate"),
                                 video=r.get("video")))
    if not items:
        raise InputError(src, "no reference captions")
    return items


def evaluate_captions(
    items: Sequence[CaptionItem],
    judge: Any | None = None,
    captioner: Callable[[list, str], str] | None = None,
    frames_for: Callable[[CaptionItem], list] | None = None,
    retries: int = 2,
    judge_name: str = "",
    progress: ProgressFn | None = None,
) -> CaptionScoreResult:
    """Score captions. Items without a candidate are captioned by `captioner(frames, CAPTION_PROMPT)`
    on `frames_for(item)`. With judge=None only the similarity measures are computed."""
    judge_fn = as_judge(judge) if judge is not None else None
    tick = Throttled(progress)
    records = []
    for i, it in enumerate(items):
        cand, error = it.candidate, None
        if cand is None:
            if captioner is None or frames_for is None:
                raise ValueError(f"item {it.video_id} has no candidate and no captioner was given")
            try:
                cand = captioner(frames_for(it), CAPTION_PROMPT)
            except InputError as exc:
                error, cand = str(exc), ""
        cand = "" if cand is None else str(cand)
        rec = {
            "video_id": it.video_id, "reference": it.reference, "candidate": cand, "error": error,
            "similarity": caption_similarity(cand, it.reference),
            "judge": score_caption(judge_fn, it.reference, cand, retries) if judge_fn and error is None else None,
        }
        records.append(rec)
        tick(i + 1, len(items), f"caption {it.video_id}")
    return CaptionScoreResult(records=records, judge_name=judge_name)


def make_judge(spec: str | None) -> tuple[Any | None, str]:
    """A judge backend from a command-line spec; returns (backend, name).

    "none" / "" -> no judge (similarity only); "local:smoke" -> the tiny random smoke LLM (demo);
    "local:PATH" -> a local transformers LLM
    (curation.captioning.local.LocalChatBackend, constrained JSON output);
    "openai:BASE_URL#MODEL" -> an OpenAI-compatible server (curation.captioning HTTP backend;
    the API key is read from OPENAI_API_KEY)."""
    if not spec or spec == "none":
        return None, ""
    kind, _, rest = spec.partition(":")
    if kind == "local" and rest == "smoke":
        # the tiny random LLM of the captioning smoke profile (built once, cached under LONGVILA_MODELS_DIR)
        from curation.captioning.local import LocalChatBackend
        from curation.captioning.smoke_models import ensure_smoke_models
        from longvila.settings import project_root

        models_dir = os.environ.get("LONGVILA_MODELS_DIR") or str(project_root() / "data" / "models")
        return LocalChatBackend(ensure_smoke_models(models_dir).llm, kind="llm", num_threads=1), "local:smoke"
    if kind == "local" and rest:
        from curation.captioning.local import LocalChatBackend

        return LocalChatBackend(rest, kind="llm"), f"local:{rest}"
    if kind == "openai" and rest:
        from curation.captioning.openai_http import OpenAIChatBackend

        url, _, model = rest.partition("#")
        if not model:
            raise ValueError(f"judge spec {spec!r} names no model: use openai:URL#MODEL")
        return OpenAIChatBackend(url, model, api_key_env="OPENAI_API_KEY"), spec
    raise ValueError(f"judge spec must be none, local:PATH or openai:URL#MODEL, got {spec!r}")


def write_caption_outputs(result: CaptionScoreResult, out_dir: str) -> dict[str, str]:
    paths = {"results": lio.join(out_dir, "results.json"), "summary": lio.join(out_dir, "summary.md")}
    lio.write_text(paths["summary"], "# Long-video caption score\n\n" + result.to_markdown() + "\n")
    lio.write_json(paths["results"], result.to_json())  # last: marks a complete set of outputs
    return paths

