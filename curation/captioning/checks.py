"""Pure data checks behind the Dagster asset checks (usable and testable without Dagster)."""

from __future__ import annotations

from typing import Sequence

from .annotate import QUESTION_TYPES
from .quality import near_duplicates


def every_clip_captioned(captions, clip_indices: Sequence[int]) -> dict:
    d = captions.select(["clip_index", "ok", "error"]).to_pydict()
    have = set(d["clip_index"])
    missing = sorted(set(clip_indices) - have)
    extra = sorted(have - set(clip_indices))
    failed = {ci: err for ci, ok, err in zip(d["clip_index"], d["ok"], d["error"]) if not ok}
    return {
        "passed": not missing and not extra and not failed,
        "num_clips": len(clip_indices),
        "missing": missing,
        "extra": extra,
        "failed": failed,
    }


def no_empty_captions(captions) -> dict:
    d = captions.select(["clip_index", "caption", "ok"]).to_pydict()
    empty = [ci for ci, c, ok in zip(d["clip_index"], d["caption"], d["ok"]) if ok and not c.strip()]
    return {"passed": not empty, "empty": empty}


def duplicate_captions(captions, threshold: float = 0.9) -> dict:
    d = captions.select(["clip_index", "caption", "ok"]).to_pydict()
    rows = [(ci, c) for ci, c, ok in zip(d["clip_index"], d["caption"], d["ok"]) if ok]
    pairs = near_duplicates([c for _, c in rows], threshold)
    out = [{"clip_a": rows[i][0], "clip_b": rows[j][0], "similarity": s} for i, j, s in pairs]
    return {"passed": not out, "pairs": out, "threshold": threshold}


def question_types_present(records: Sequence[dict]) -> dict:
    counts = {t: 0 for t in QUESTION_TYPES}
    for r in records:
        if r.get("question_type") in counts:
            counts[r["question_type"]] += 1
    return {"passed": all(counts.values()), "counts": counts, "absent": [t for t, n in counts.items() if not n]}


def timestamps_in_bounds(records: Sequence[dict], duration_s: float, slack_s: float = 1.0) -> dict:
    bad = []
    for r in records:
        f = r.get("frames") or {}
        s, e = f.get("start_s"), f.get("end_s")
        if s is None or e is None or not (0 <= s <= e <= duration_s + slack_s):
            bad.append({"id": r.get("id"), "start_s": s, "end_s": e})
    return {"passed": not bad, "out_of_bounds": bad, "duration_s": duration_s}
