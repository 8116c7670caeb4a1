"""Where a run's time went, read back from the instance (`run_timeline`) and averaged over runs (`phase_means`).

For one run: when it was created (by a sensor tick, a backfill or a launch), taken from the queue and
launched, started in its worker, and when each step started and ended (`get_run_stats`,
`get_run_step_stats`), with the number of events it wrote. `phase_means` turns timelines into the
phases a user waits through, from a start time such as the moment the video landed:

    until created (sensor interval + tick) | queued (waiting for a run slot, dequeue interval)
    | launch (fork of the warm process, worker start) | to first step (resources, plan)
    | asset steps | check steps | between steps (event writes, step set-up) | after last step

Step keys of asset checks evaluated in their own step are told apart from asset steps by `asset_steps`.
Used by bench/orchestration.py; works on any instance (``DagsterInstance.get()``) for a user's own runs.
"""

from __future__ import annotations

from statistics import mean
from typing import Iterable, Optional

PHASES = ("until created", "queued", "launch", "to first step", "asset steps", "check steps", "between steps",
          "after last step")


def run_timeline(instance, run_id: str) -> dict:
    """Timestamps (epoch seconds) and step durations of a finished run."""
    stats = instance.get_run_stats(run_id)
    steps = [s for s in instance.get_run_step_stats(run_id) if s.start_time and s.end_time]
    return {
        "run_id": run_id,
        "created": instance.get_run_record_by_id(run_id).create_timestamp.timestamp(),
        "launched": stats.launch_time, "started": stats.start_time, "ended": stats.end_time,
        "first_step": min(s.start_time for s in steps), "last_step": max(s.end_time for s in steps),
        "steps": {s.step_key: s.end_time - s.start_time for s in steps},
        "events": len(instance.all_logs(run_id)),
    }


def phases(timeline: dict, since: float, asset_steps: Iterable[str]) -> dict[str, float]:
    """The phases (seconds) of one run's `timeline`, the first one counted from `since`."""
    t = timeline
    assets = set(asset_steps)
    asset_s = sum(d for k, d in t["steps"].items() if k in assets)
    check_s = sum(d for k, d in t["steps"].items() if k not in assets)
    return {
        "until created": t["created"] - since, "queued": t["launched"] - t["created"],
        "launch": t["started"] - t["launched"], "to first step": t["first_step"] - t["started"],
        "asset steps": asset_s, "check steps": check_s,
        "between steps": t["last_step"] - t["first_step"] - asset_s - check_s,
        "after last step": t["ended"] - t["last_step"],
    }


def phase_means(timelines: list[dict], since: float, asset_steps: Iterable[str]) -> dict[str, float]:
    rows = [phases(t, since, asset_steps) for t in timelines]
    return {p: mean(r[p] for r in rows) for p in PHASES}


def step_means(timelines: list[dict], keys: Optional[Iterable[str]] = None) -> dict[str, float]:
    """Mean duration of each step key over the runs that had it (`keys`: those only, in that order)."""
    keys = list(keys) if keys is not None else sorted({k for t in timelines for k in t["steps"]})
    return {k: mean(t["steps"][k] for t in timelines if k in t["steps"]) for k in keys
            if any(k in t["steps"] for t in timelines)}
