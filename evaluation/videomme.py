"""VideoMME-format multiple-choice evaluation.

Question files follow the public VideoMME layout (the Hugging Face parquet `videomme/test-*.parquet`,
or JSON / JSONL with the same fields). One record per question:

| field | meaning |
|---|---|
| video_id | the benchmark's video number ("001") |
| videoID | (optional) the file stem of the video (YouTube id in the public release); defaults to video_id |
| duration | "short" / "medium" / "long" |
| domain, sub_category, task_type | (optional) categories, reported per value |
| question_id | unique id ("001-1") |
| question | the question text |
| options | ["A. ...", "B. ...", "C. ...", "D. ..."] |
| answer | the correct letter |
| subtitles | (optional) subtitle text; otherwise `<subtitle_dir>/<videoID>.srt` when it exists |

A nested JSON layout (one entry per video with a "questions" list, as in the VideoMME repository's
JSON) is also read. Videos are found as `<video_dir>/<videoID or video_id>.<mp4|mkv|webm|avi|mov>`.

The model sees `num_frames` frames sampled uniformly over the video and the official VideoMME prompt;
its free-form reply is turned into a letter by `evaluation.answers.extract_choice` (no letter -> wrong,
counted in `no_answer`). Accuracy is reported overall, per duration bucket and per domain / task type,
without subtitles and -- when any question has subtitles -- with subtitles.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from longvila import io as lio
from longvila.errors import InputError, VideoError
from longvila.progress import ProgressFn, Throttled

from .answers import extract_choice, option_letters

__all__ = [
    "MCQuestion",
    "load_questions",
    "find_video",
    "read_srt",
    "read_srt_cues",
    "subtitles_at",
    "videomme_prompt",
    "sample_uniform_frames",
    "evaluate_videomme",
    "VideoMMEResult",
    "write_videomme_outputs",
    "DURATIONS",
]

DURATIONS = ("short", "medium", "long")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov")

PROMPT_HEAD = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
SUBTITLE_HEAD = "This video's subtitles are listed below:"


@dataclass
class MCQuestion:
    question_id: str
    video_id: str
    video_file_id: str
    duration: str
    question: str
    options: list[str]
    answer: str
    domain: str = ""
    sub_category: str = ""
    task_type: str = ""
    subtitles: str | None = None
    subtitle_cues: list | None = None  # [(start_s, end_s, text)] from an SRT file (None for inline text)

    @property
    def letters(self) -> list[str]:
        return option_letters(self.options)


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, str):
        s = x.strip()
        if s.startswith("["):
            try:
                return list(json.loads(s))
            except json.JSONDecodeError:
                pass
        return [p for p in re.split(r"\n+", s) if p.strip()]
    return list(x)


def _records_from_obj(obj: Any, source: str) -> list[dict]:
    if isinstance(obj, dict):
        for key in ("questions", "data", "records"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
        else:
            raise InputError(source, "JSON question file must be a list or hold a 'questions'/'data' list")
    if not isinstance(obj, list):
        raise InputError(source, "JSON question file must hold a list of records")
    flat: list[dict] = []
    for i, rec in enumerate(obj):
        if not isinstance(rec, dict):
            raise InputError(source, f"record {i} is not an object")
        if isinstance(rec.get("questions"), list):  # nested: one entry per video
            video = {k: v for k, v in rec.items() if k != "questions"}
            for q in rec["questions"]:
                if not isinstance(q, dict):
                    raise InputError(source, f"video record {i} has a question that is not an object")
                flat.append({**video, **q})
        else:
            flat.append(rec)
    return flat


def _read_records(path: str) -> list[dict]:
    p = str(path)
    try:
        data = lio.read_bytes(p)
    except FileNotFoundError as exc:
        raise InputError(p, "question file does not exist") from exc
    if p.endswith(".parquet"):
        import io

        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(data)).to_pylist()
        except Exception as exc:
            raise InputError(p, f"not a readable parquet file: {exc}") from exc
    text = data.decode("utf-8", "replace")
    if p.endswith(".jsonl"):
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(p, f"line {n} is not JSON: {exc.msg}") from exc
        return _records_from_obj(out, p)
    try:
        return _records_from_obj(json.loads(text), p)
    except json.JSONDecodeError as exc:
        raise InputError(p, f"not JSON: {exc.msg} at line {exc.lineno}") from exc


def load_questions(path: str, subtitle_dir: str | None = None) -> list[MCQuestion]:
    """Read and validate a VideoMME-format question file (parquet, JSON or JSONL)."""
    src = str(path)
    out: list[MCQuestion] = []
    seen: set[str] = set()
    for i, rec in enumerate(_read_records(src)):
        missing = [k for k in ("question", "options", "answer", "duration") if rec.get(k) in (None, "")]
        vid = rec.get("video_id") if rec.get("video_id") not in (None, "") else rec.get("videoID")
        if vid in (None, ""):
            missing.append("video_id")
        if missing:
            raise InputError(src, f"record {i} lacks {', '.join(missing)}")
        qid = str(rec.get("question_id") or f"{vid}-{i}")
        if qid in seen:
            raise InputError(src, f"duplicate question_id {qid}")
        seen.add(qid)
        options = [str(o) for o in _as_list(rec["options"])]
        if len(options) < 2:
            raise InputError(src, f"question {qid} has fewer than two options")
        letters = option_letters(options)
        if len(set(letters)) != len(letters):
            raise InputError(src, f"question {qid} has repeated option letters {letters}")
        answer = str(rec["answer"]).strip().strip("().").upper()
        if answer not in letters:
            raise InputError(src, f"question {qid}: answer {rec['answer']!r} is not one of {letters}")
        duration = str(rec["duration"]).strip().lower()
        if duration not in DURATIONS:
            raise InputError(src, f"question {qid}: duration {rec['duration']!r} is not one of {DURATIONS}")
        file_id = str(rec.get("videoID") or vid)
        subs = rec.get("subtitles") or rec.get("subtitle")
        cues = None
        if not subs and subtitle_dir:
            srt = lio.join(subtitle_dir, f"{file_id}.srt")
            if lio.exists(srt):
                cues = read_srt_cues(srt)
                subs = "\n".join(c[2] for c in cues)
        out.append(MCQuestion(
            question_id=qid, video_id=str(vid), video_file_id=file_id, duration=duration,
            question=str(rec["question"]), options=options, answer=answer,
            domain=str(rec.get("domain") or ""), sub_category=str(rec.get("sub_category") or ""),
            task_type=str(rec.get("task_type") or ""), subtitles=str(subs) if subs else None,
            subtitle_cues=cues if subs else None,
        ))
    if not out:
        raise InputError(src, "question file holds no questions")
    return out


_SRT_TIME = re.compile(r"^\d\d:\d\d:\d\d[,\.]\d+\s*-->\s*\d\d:\d\d:\d\d[,\.]\d+")


def _srt_seconds(t: str) -> float:
    h, m, rest = t.strip().replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(rest)


def read_srt_cues(path: str) -> list[tuple[float, float, str]]:
    """(start_s, end_s, text) of every cue of an SRT file; markup dropped, multi-line cues joined."""
    text = lio.read_bytes(path).decode("utf-8-sig", "replace")
    cues: list[tuple[float, float, str]] = []
    span: tuple[float, float] | None = None
    lines: list[str] = []

    def flush():
        nonlocal span, lines
        body = " ".join(x for x in lines if x)
        if body:
            cues.append((span[0], span[1], body) if span else (0.0, float("inf"), body))
        span, lines = None, []

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            flush()
            continue
        if _SRT_TIME.match(line):
            if lines:  # a cue without a blank line before the next timing
                flush()
            a, b = line.split("-->")
            try:
                span = (_srt_seconds(a), _srt_seconds(b.split()[0]))
            except (ValueError, IndexError):
                span = None
            continue
        if line.isdigit() and not lines:
            continue
        lines.append(re.sub(r"<[^>]+>|\{[^}]+\}", "", line).strip())
    flush()
    return cues


def read_srt(path: str) -> str:
    """Plain text of an SRT subtitle file: cue numbers, timings and markup dropped, one cue a line."""
    return "\n".join(c[2] for c in read_srt_cues(path))


def subtitles_at(cues: Sequence[tuple[float, float, str]], times: Sequence[float]) -> str:
    """The cues shown at any of `times` (seconds), in order, one a line: VideoMME's "subtitles of the
    sampled frames" (a cue counts when start <= t < end)."""
    keep = [c for c in cues if any(c[0] <= t < c[1] for t in times)]
    return "\n".join(c[2] for c in keep)


def find_video(video_dir: str, q: MCQuestion) -> str | None:
    for stem in dict.fromkeys([q.video_file_id, q.video_id]):
        for ext in VIDEO_EXTS:
            p = lio.join(video_dir, stem + ext)
            if lio.exists(p):
                return p
    return None


def videomme_prompt(q: MCQuestion, with_subtitles: bool = False, max_subtitle_chars: int = 4000,
                    subtitle_text: str | None = None) -> str:
    """The official VideoMME prompt; with subtitles, `subtitle_text` (default: all of q.subtitles)
    is placed first, cut at `max_subtitle_chars` on a line boundary."""
    parts = []
    subs = subtitle_text if subtitle_text is not None else q.subtitles
    if with_subtitles and subs:
        if len(subs) > max_subtitle_chars:
            subs = subs[:max_subtitle_chars].rsplit("\n", 1)[0]
        parts += [SUBTITLE_HEAD, subs]
    parts += [PROMPT_HEAD, q.question, *q.options, "The best answer is:"]
    return "\n".join(parts)


def sample_uniform_frames(video: str, num_frames: int, size: int | None = None,
                          with_times: bool = False):
    """`num_frames` frames spread uniformly over the whole video (curation.frames), as PIL images
    (and their presentation times in seconds when `with_times`).

    curation.frames.sample_video_frames switches to `max_frames` uniform timestamps when the
    requested rate would give more; asking for a rate far above any video's makes that always so."""
    from curation.frames import decode_jpeg_frames, sample_video_frames

    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    with lio.local_copy(video) as local:
        table = sample_video_frames(local, fps=1000.0, max_frames=num_frames, size=size or 384)
    frames = [im.convert("RGB") for im in decode_jpeg_frames(table)]
    if not frames:
        raise VideoError(str(video), "no frames could be sampled")
    if with_times:
        return frames, [float(t) for t in table.column("pts_s").to_pylist()]
    return frames


Answerer = Callable[[list, str], str]


@dataclass
class VideoMMEResult:
    records: list[dict]
    modes: list[str] = field(default_factory=list)
    scoring: str = "generate"

    def _acc(self, recs: Iterable[dict]) -> dict:
        recs = [r for r in recs if r.get("error") is None]
        n = len(recs)
        c = sum(bool(r["correct"]) for r in recs)
        return {"accuracy": c / n if n else None, "correct": c, "total": n,
                "no_answer": sum(r["predicted"] is None for r in recs)}

    def accuracy(self, mode: str = "without_subtitles", **filters: str) -> float | None:
        recs = [r for r in self.records if r["mode"] == mode
                and all(r.get(k) == v for k, v in filters.items())]
        return self._acc(recs)["accuracy"]

    def breakdown(self, mode: str, by: str) -> dict[str, dict]:
        groups: dict[str, list[dict]] = {}
        for r in self.records:
            if r["mode"] == mode and r.get(by):
                groups.setdefault(r[by], []).append(r)
        return {k: self._acc(v) for k, v in sorted(groups.items())}

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.records if r.get("error")]

    def summary(self) -> dict:
        out: dict[str, Any] = {"modes": self.modes, "scoring": self.scoring,
                               "errors": len({r["question_id"] for r in self.errors})}
        for mode in self.modes:
            recs = [r for r in self.records if r["mode"] == mode]
            out[mode] = {
                "overall": self._acc(recs),
                "duration": {d: v for d, v in self.breakdown(mode, "duration").items()},
                "domain": self.breakdown(mode, "domain"),
                "task_type": self.breakdown(mode, "task_type"),
            }
        return out

    def to_markdown(self) -> str:
        def fmt(a: dict | None) -> str:
            if not a or a["accuracy"] is None:
                return "-"
            return f"{100 * a['accuracy']:.1f} ({a['correct']}/{a['total']})"

        head = "| duration | " + " | ".join(m.replace("_", " ") for m in self.modes) + " |"
        sep = "|---|" + "---|" * len(self.modes)
        rows = []
        for d in (*DURATIONS, "overall"):
            cells = []
            for m in self.modes:
                recs = [r for r in self.records if r["mode"] == m and (d == "overall" or r["duration"] == d)]
                cells.append(fmt(self._acc(recs)) if recs else "-")
            rows.append(f"| {'**overall**' if d == 'overall' else d} | " + " | ".join(cells) + " |")
        return "\n".join([head, sep, *rows])

    def to_json(self) -> dict:
        return {"summary": self.summary(), "records": self.records}


def evaluate_videomme(
    answerer: Answerer,
    questions: Sequence[MCQuestion],
    video_dir: str,
    num_frames: int = 8,
    frame_size: int | None = None,
    subtitles: str = "auto",
    strict: bool = False,
    scoring: str = "generate",
    subtitle_selection: str = "frames",
    progress: ProgressFn | None = None,
) -> VideoMMEResult:
    """Ask `answerer(frames, prompt) -> reply` every question; frames are sampled once per video.

    subtitles: "auto" (with-subtitles pass too when any question has subtitles), "never", "always".
    subtitle_selection: "frames" (VideoMME's protocol: only the SRT cues shown at the sampled
    frames' timestamps; inline subtitle text without timings is used whole) or "all".
    scoring: "generate" (the official protocol: free-form reply, letter extracted) or "option_logits"
    (the answerer's `choice_scores(frames, prompt, letters)`: the letter with the highest first-token
    logit; always answers, so a random model scores near chance instead of near zero).
    A missing or undecodable video fails its own questions (recorded with `error`, excluded from the
    accuracy and counted in summary["errors"]) unless `strict`, which raises.
    """
    if scoring not in ("generate", "option_logits"):
        raise ValueError(f"scoring must be generate/option_logits, got {scoring!r}")
    if scoring == "option_logits" and not hasattr(answerer, "choice_scores"):
        raise TypeError("scoring='option_logits' needs an answerer with choice_scores(frames, prompt, letters)")
    if subtitle_selection not in ("frames", "all"):
        raise ValueError(f"subtitle_selection must be frames/all, got {subtitle_selection!r}")
    if subtitles not in ("auto", "never", "always"):
        raise ValueError(f"subtitles must be auto/never/always, got {subtitles!r}")
    has_subs = any(q.subtitles for q in questions)
    modes = ["without_subtitles"]
    if subtitles == "always" or (subtitles == "auto" and has_subs):
        modes.append("with_subtitles")
    by_video: dict[str, list[MCQuestion]] = {}
    for q in questions:
        by_video.setdefault(q.video_file_id, []).append(q)
    tick = Throttled(progress)
    records: list[dict] = []
    done = 0
    total = len(questions) * len(modes)
    for file_id, qs in by_video.items():
        frames, times, error = None, [], None
        path = find_video(video_dir, qs[0])
        if path is None:
            error = f"video {file_id} not found in {video_dir}"
            if strict:
                raise InputError(str(video_dir), error)
        else:
            try:
                frames, times = sample_uniform_frames(path, num_frames, frame_size, with_times=True)
            except InputError as exc:
                if strict:
                    raise
                error = str(exc)
        for mode in modes:
            for q in qs:
                rec = {
                    "question_id": q.question_id, "video_id": q.video_id, "duration": q.duration,
                    "domain": q.domain, "sub_category": q.sub_category, "task_type": q.task_type,
                    "mode": mode, "answer": q.answer, "reply": None, "predicted": None,
                    "correct": False, "error": error,
                }
                if frames is not None:
                    sub_text = None
                    if mode == "with_subtitles" and q.subtitle_cues and subtitle_selection == "frames":
                        sub_text = subtitles_at(q.subtitle_cues, times)
                        rec["subtitle_chars"] = len(sub_text)
                    prompt = videomme_prompt(q, with_subtitles=(mode == "with_subtitles"), subtitle_text=sub_text)
                    if scoring == "option_logits":
                        scores = answerer.choice_scores(frames, prompt, q.letters)
                        rec["scores"] = scores
                        rec["reply"] = max(scores, key=scores.get)
                        rec["predicted"] = rec["reply"]
                    else:
                        reply = answerer(frames, prompt)
                        rec["reply"] = reply
                        rec["predicted"] = extract_choice(reply, q.options)
                    rec["correct"] = rec["predicted"] == q.answer
                records.append(rec)
                done += 1
                tick(done, total, f"videomme {q.question_id} ({mode})")
    return VideoMMEResult(records=records, modes=modes, scoring=scoring)


def write_videomme_outputs(result: VideoMMEResult, out_dir: str) -> dict[str, str]:
    paths = {"results": lio.join(out_dir, "results.json"), "summary": lio.join(out_dir, "summary.md")}
    lio.write_text(paths["summary"], "# VideoMME-format multiple choice\n\n" + result.to_markdown() + "\n")
    lio.write_json(paths["results"], result.to_json())  # last: marks a complete set of outputs
    return paths

