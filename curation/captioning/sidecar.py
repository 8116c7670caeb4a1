"""Human segment annotations shipped beside a video (a "sidecar"), used as clip captions.

Annotated corpora (Shot2Story, ActivityNet Captions, YouCook2) come with time-stamped segment
captions. A sidecar is looked up beside the video, with the video's name and another suffix
(`find_sidecar`): for `s3://bucket/videos/cooking/v01.mp4` the candidates are `.../v01.json` and
`.../v01.srt`. Both present is an error (ambiguous). No sidecar: every clip is captioned by the VLM.

JSON sidecar (UTF-8), one of these shapes (the last two are the per-video entries of ActivityNet
Captions and YouCook2, accepted as they are):

    {"segments": [{"start": 0.0, "end": 4.5, "caption": "The number 7 on a red background.",
                   "text": "7"}, ...]}                        # "text" (optional): on-screen text
    {"duration": 82.7, "timestamps": [[0.8, 19.9], ...], "sentences": ["...", ...]}
    {"annotations": [{"segment": [0.8, 19.9], "sentence": "..."}, ...]}

SRT sidecar: standard SubRip cues (`HH:MM:SS,mmm --> HH:MM:SS,mmm`, then the caption lines).

Validation (`load_sidecar`, against the probed duration): every segment has 0 <= start < end <=
duration + `DURATION_SLACK_S` and a non-empty caption; anything else raises `InputError` naming the
sidecar file and the segment. Policy: a bad sidecar fails its video's partition (the user shipped
annotations to have them used; silently captioning with a model instead would hide the error).

Clips get an annotation caption when one segment covers at least `MIN_COVERAGE` of the clip
(`match_clips`: the segment with the largest overlap wins); the other clips are left to the VLM.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

from longvila import io as lio
from longvila.errors import InputError

SIDECAR_SUFFIXES = (".json", ".srt")
DURATION_SLACK_S = 0.5
MIN_COVERAGE = 0.7
ANNOTATION = "annotation"
MODEL = "model"


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    caption: str
    text: str | None = None  # on-screen text, when annotated


@dataclass(frozen=True)
class Sidecar:
    url: str
    sha256: str
    segments: tuple[Segment, ...]

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def tag(self) -> str:
        """What the `model` column of an annotated caption row holds: file name and content hash."""
        return f"{ANNOTATION}:{self.name}@{self.sha256[:16]}"


def sidecar_candidates(video_url: str) -> list[str]:
    stem = video_url.rsplit(".", 1)[0] if "." in video_url.rsplit("/", 1)[-1] else video_url
    return [stem + s for s in SIDECAR_SUFFIXES]


def find_sidecar(video_url: str, settings=None) -> str | None:
    """The sidecar URL of a video, None when there is none; InputError when there are two."""
    found = [u for u in sidecar_candidates(video_url) if lio.exists(u, settings)]
    if len(found) > 1:
        raise InputError(video_url, f"two annotation sidecars ({', '.join(found)}); keep one")
    return found[0] if found else None


# ------------------------------------------------------------------------------------------ parsing

_SRT_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*-->\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")


def _srt_seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000.0


def parse_srt(text: str, source: str) -> list[Segment]:
    """SubRip cues -> segments (cue text lines joined with a space)."""
    segments = []
    for n, block in enumerate(re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip())):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        timing = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if timing is None:
            raise InputError(source, f"cue {n + 1}: no 'start --> end' line")
        m = _SRT_TIME.match(lines[timing])
        if m is None:
            raise InputError(source, f"cue {n + 1}: cannot read the time line {lines[timing].strip()!r}")
        g = m.groups()
        caption = " ".join(ln.strip() for ln in lines[timing + 1:])
        segments.append(Segment(_srt_seconds(*g[:4]), _srt_seconds(*g[4:]), caption))
    return segments


def _number(v, source: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(source, f"{where}: expected a number of seconds, got {v!r}")
    return float(v)


def _json_segments(obj, source: str) -> list[tuple[object, object, object, object]]:
    """(start, end, caption, text) tuples of any accepted JSON shape, not yet validated."""
    if not isinstance(obj, dict):
        raise InputError(source, "a JSON sidecar is an object with 'segments', 'timestamps'+'sentences' or "
                                 "'annotations'")
    if "segments" in obj:
        segs = obj["segments"]
        if not isinstance(segs, list) or not all(isinstance(s, dict) for s in segs):
            raise InputError(source, "'segments' must be a list of objects")
        return [(s.get("start"), s.get("end"), s.get("caption"), s.get("text")) for s in segs]
    if "timestamps" in obj or "sentences" in obj:
        ts, sent = obj.get("timestamps"), obj.get("sentences")
        if not isinstance(ts, list) or not isinstance(sent, list) or len(ts) != len(sent):
            raise InputError(source, "'timestamps' and 'sentences' must be lists of the same length")
        if not all(isinstance(t, list) and len(t) == 2 for t in ts):
            raise InputError(source, "every timestamp must be a [start, end] pair")
        return [(t[0], t[1], c, None) for t, c in zip(ts, sent)]
    if "annotations" in obj:
        ann = obj["annotations"]
        if not isinstance(ann, list) or not all(isinstance(a, dict) and isinstance(a.get("segment"), list)
                                                and len(a["segment"]) == 2 for a in ann):
            raise InputError(source, "'annotations' must be a list of {'segment': [start, end], 'sentence'}")
        return [(a["segment"][0], a["segment"][1], a.get("sentence"), None) for a in ann]
    raise InputError(source, "no 'segments', 'timestamps'+'sentences' or 'annotations' in the JSON sidecar")


def parse_json(text: str, source: str) -> list[Segment]:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise InputError(source, f"not valid JSON: {e}") from None
    out = []
    for i, (s, e, cap, txt) in enumerate(_json_segments(obj, source)):
        where = f"segment {i}"
        if not isinstance(cap, str):
            raise InputError(source, f"{where}: caption must be a string, got {cap!r}")
        if txt is not None and not isinstance(txt, str):
            raise InputError(source, f"{where}: text must be a string, got {txt!r}")
        out.append(Segment(_number(s, source, f"{where} start"), _number(e, source, f"{where} end"), cap,
                           txt.strip() if txt and txt.strip() else None))
    return out


def validate(segments: Sequence[Segment], duration_s: float, source: str) -> tuple[Segment, ...]:
    """Segments sorted by start, with whitespace-normalised captions; InputError on the first bad one."""
    if not segments:
        raise InputError(source, "the sidecar holds no segments")
    out = []
    for i, s in enumerate(segments):
        cap = " ".join(s.caption.split())
        if not cap:
            raise InputError(source, f"segment {i} ({s.start_s:g}-{s.end_s:g} s): empty caption")
        if not 0.0 <= s.start_s < s.end_s:
            raise InputError(source, f"segment {i}: span {s.start_s:g}-{s.end_s:g} s is not 0 <= start < end")
        if s.end_s > duration_s + DURATION_SLACK_S:
            raise InputError(source, f"segment {i}: ends at {s.end_s:g} s, after the end of the video "
                                     f"({duration_s:g} s)")
        out.append(Segment(s.start_s, min(s.end_s, duration_s), cap, s.text))
    return tuple(sorted(out, key=lambda s: (s.start_s, s.end_s)))


def load_sidecar(url: str, duration_s: float, settings=None) -> Sidecar:
    """Read, parse and validate a sidecar (see the module docstring)."""
    try:
        data = lio.read_bytes(url, settings)
    except FileNotFoundError:
        raise InputError(url, "annotation sidecar disappeared before it could be read") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(url, f"not UTF-8 text: {e}") from None
    segs = parse_srt(text, url) if url.lower().endswith(".srt") else parse_json(text, url)
    return Sidecar(url, lio.sha256_bytes(data), validate(segs, duration_s, url))


def match_clips(segments: Sequence[Segment], clip_spans: Sequence[tuple[float, float]]) -> list[Segment | None]:
    """For every clip span, the segment overlapping it most if it covers >= MIN_COVERAGE of the clip."""
    out: list[Segment | None] = []
    for cs, ce in clip_spans:
        best, best_overlap = None, 0.0
        for s in segments:
            overlap = min(ce, s.end_s) - max(cs, s.start_s)
            if overlap > best_overlap:
                best, best_overlap = s, overlap
        out.append(best if ce > cs and best_overlap >= MIN_COVERAGE * (ce - cs) else None)
    return out


__all__ = ["Segment", "Sidecar", "SIDECAR_SUFFIXES", "ANNOTATION", "MODEL", "find_sidecar", "sidecar_candidates",
           "load_sidecar", "parse_json", "parse_srt", "validate", "match_clips"]
