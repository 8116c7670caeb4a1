"""Locally generated benchmark fixtures with known answers (smoke runs, tests, the demo).

* `make_videomme_fixture(root)`: tiny solid-colour videos (curation.synth) in the public VideoMME
  layout: `root/videos/<videoID>.mp4`, `root/subtitle/<videoID>.srt` (for some videos),
  `root/videomme/test-00000-of-00001.parquet` and the same questions as `root/questions.json`.
  Every video carries a colour question (answerable from the frames) and, when it has subtitles, a
  question answerable only from them, so "with subtitles" scores differ from "without".
* `fixture_oracle(frames, prompt)`: a scripted answerer that actually looks: it names the option
  whose colour is nearest the frames' mean colour, and reads the subtitle block of the prompt; for a
  subtitle question without subtitles it refuses. It scores 100 % with subtitles on the fixture.
* `make_reference_captions(root)`: reference captions for the fixture videos (used when the lake has
  no video summaries).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from longvila import io as lio

from .answers import option_letters, option_text

__all__ = ["COLOURS", "FixtureVideo", "make_videomme_fixture", "ensure_videomme_fixture", "fixture_videos",
           "fixture_oracle", "make_reference_captions"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
    "purple": (140, 40, 170),
    "white": (240, 240, 240),
}
SUB_WORDS = ["harbour", "lantern", "meadow", "thunder", "compass", "orchard", "glacier", "velvet"]
DOMAINS = ["Knowledge", "Film & Television", "Sports Competition", "Life Record"]


@dataclass
class FixtureVideo:
    video_id: str
    file_id: str
    colour: str
    duration: str
    seconds: float
    subtitle_word: str | None


def _ts(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _srt(word: str, seconds: float) -> str:
    """Two cues: a short "Listen." at the start (shown at no uniformly sampled frame of a 2+-frame
    sample) and the secret word from 0.2 s to the end of the video."""
    return (f"1\n{_ts(0.0)} --> {_ts(0.2)}\n<i>Listen.</i>\n\n"
            f"2\n{_ts(0.2)} --> {_ts(seconds)}\nThe secret word is {word}.\n")


def make_videomme_fixture(root: str, n_videos: int = 6, seed: int = 0, size: int = 64, fps: int = 4,
                          subtitle_every: int = 2) -> dict:
    """Write the fixture under `root` (a local folder). Returns paths and the videos' ground truth."""
    from curation.synth import make_synthetic_video

    rng = random.Random(seed)
    root_p = Path(root)
    names = list(COLOURS)
    videos: list[FixtureVideo] = []
    records: list[dict] = []
    for i in range(n_videos):
        colour = names[i % len(names)]
        duration = ("short", "medium", "long")[i % 3]
        seconds = {"short": 1.0, "medium": 2.0, "long": 3.0}[duration]
        vid = f"{i + 1:03d}"
        file_id = f"fx{seed}{vid}"
        word = SUB_WORDS[(i + seed) % len(SUB_WORDS)] if subtitle_every and i % subtitle_every == 0 else None
        rgb = COLOURS[colour]
        make_synthetic_video(str(root_p / "videos" / f"{file_id}.mp4"),
                             shots=[(seconds, f"color=c=0x{rgb[0]:02X}{rgb[1]:02X}{rgb[2]:02X}:s={{s}}:r={{r}}")],
                             fps=fps, size=(size, size))
        if word:
            lio.write_text(str(root_p / "subtitle" / f"{file_id}.srt"), _srt(word, seconds))
        videos.append(FixtureVideo(vid, file_id, colour, duration, seconds, word))
        domain = DOMAINS[i % len(DOMAINS)]
        base = {"video_id": vid, "duration": duration, "domain": domain, "sub_category": "Synthetic",
                "url": f"file://{file_id}.mp4", "videoID": file_id}
        opts = rng.sample([c for c in names if c != colour], 3) + [colour]
        rng.shuffle(opts)
        letters = "ABCD"
        records.append({**base, "question_id": f"{vid}-1", "task_type": "Attribute Perception",
                        "question": "What is the main colour of the video?",
                        "options": [f"{letters[k]}. {o}." for k, o in enumerate(opts)],
                        "answer": letters[opts.index(colour)]})
        if word:
            wopts = rng.sample([w for w in SUB_WORDS if w != word], 3) + [word]
            rng.shuffle(wopts)
            records.append({**base, "question_id": f"{vid}-2", "task_type": "Information Synopsis",
                            "question": "Which secret word does the speaker say?",
                            "options": [f"{letters[k]}. {o}." for k, o in enumerate(wopts)],
                            "answer": letters[wopts.index(word)]})
    import pyarrow as pa

    parquet = str(root_p / "videomme" / "test-00000-of-00001.parquet")
    lio.write_parquet(pa.Table.from_pylist(records), parquet)
    json_path = str(root_p / "questions.json")
    lio.write_json(str(root_p / "fixture.json"), {"videos": [v.__dict__ for v in videos]})
    # questions.json last: its presence marks a complete fixture
    lio.write_json(json_path, records)
    return {
        "root": str(root_p), "parquet": parquet, "json": json_path,
        "video_dir": str(root_p / "videos"), "subtitle_dir": str(root_p / "subtitle"),
        "videos": videos, "questions": records,
    }


def fixture_videos(root: str) -> list[FixtureVideo]:
    """The ground truth of a fixture written by `make_videomme_fixture` under `root`."""
    data = lio.read_json(lio.join(root, "fixture.json"))
    return [FixtureVideo(**v) for v in data["videos"]]


def ensure_videomme_fixture(root: str, **kwargs) -> dict:
    """Make the fixture under `root` unless a complete one is there; returns its paths and videos."""
    if not (lio.exists(lio.join(root, "questions.json")) and lio.exists(lio.join(root, "fixture.json"))):
        return make_videomme_fixture(root, **kwargs)
    rp = Path(root)
    return {
        "root": str(rp), "parquet": str(rp / "videomme" / "test-00000-of-00001.parquet"),
        "json": str(rp / "questions.json"), "video_dir": str(rp / "videos"),
        "subtitle_dir": str(rp / "subtitle"), "videos": fixture_videos(root),
        "questions": lio.read_json(lio.join(root, "questions.json")),
    }


_SUB_BLOCK = re.compile(r"This video's subtitles are listed below:\n(.*?)\nSelect the best answer", re.S)
_OPTION_LINE = re.compile(r"^\s*([A-Z])\.\s*(.+?)\s*$", re.M)


def fixture_oracle(frames: list, prompt: str) -> str:
    """Scripted answerer for the fixture: mean colour of the frames / subtitle reading."""
    import numpy as np

    options = [f"{m.group(1)}. {m.group(2)}" for m in _OPTION_LINE.finditer(prompt)]
    if not options:
        return "I cannot answer: no options."
    letters = option_letters(options)
    texts = [option_text(o).strip(" .").lower() for o in options]
    if "Which secret word does the speaker say?" in prompt:
        m = _SUB_BLOCK.search(prompt)
        if not m:
            return "I cannot determine that from the frames alone."
        subs = m.group(1).lower()
        for letter, t in zip(letters, texts):
            if re.search(rf"\b{re.escape(t)}\b", subs):
                return f"The answer is ({letter})."
        return "None of the options."
    mean = np.mean([np.asarray(f.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) for f in frames], 0)
    best, dist = None, float("inf")
    for letter, t in zip(letters, texts):
        if t in COLOURS:
            d = float(np.sum((mean - np.array(COLOURS[t])) ** 2))
            if d < dist:
                best, dist = letter, d
    return f"{best}" if best else "I cannot tell."


def make_reference_captions(fixture: dict) -> list[dict]:
    """One reference caption per fixture video (what a perfect captioner would say)."""
    out = []
    for v in fixture["videos"]:
        text = f"The whole video shows a plain {v.colour} screen with no objects, people or motion."
        if v.subtitle_word:
            text += f" A voice says that the secret word is {v.subtitle_word}."
        out.append({"video_id": v.file_id, "reference": text,
                    "video": str(Path(fixture["video_dir"]) / f"{v.file_id}.mp4")})
    return out
