"""The training job and its schedule: re-train the stages whose data moved on.

``training`` is the job of the stage datasets and stage checkpoints (a UI launch of it, or of any of its
assets through the schedule, carries ``dagster/max_runtime``: the run monitoring daemon fails a run that
trains longer, so a hung stage frees the GPU pool). ``training_schedule`` evaluates, at each tick of
its cron, the drift of every enabled stage (`assets.freshness.stage_drift`: new, changed or removed
videos since the checkpoint was trained, or a rebuilt dataset). From the first stage that moved on, it
requests one run of that stage and every later enabled stage, with their datasets: later stages start
from the earlier checkpoints, so they are re-trained in order. A stage that was never trained is left
to a manual launch.

* ``LONGVILA_TRAIN_SCHEDULE``: cron of the schedule (default ``0 2 * * *``, nightly at 02:00);
* ``LONGVILA_TRAIN_SCHEDULE_STAGES``: stages it may re-train, ``all``, ``none`` or names
  (``stage5_long_sft,...``); default ``all`` for the smoke recipe, ``none`` otherwise;
* ``LONGVILA_TRAIN_MAX_RUNTIME_S``: ``dagster/max_runtime`` of training runs (default 1800 s for the
  smoke recipe, 3 days otherwise).

The schedule is RUNNING by default only when it may re-train some stage: expensive recipes start with
it stopped (switch it on in the UI after choosing the stages).
"""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

from assets.resources import LakeResource
from assets.training import DATASET_KEYS, GROUP, STAGE_KEYS, per_video_inputs, recipe_from_env

from .instance import AUTOMATED_RUN_TAGS

RECIPE = recipe_from_env()
SMOKE = RECIPE.name == "smoke"
CRON = os.environ.get("LONGVILA_TRAIN_SCHEDULE") or "0 2 * * *"
MAX_RUNTIME_S = int(os.environ.get("LONGVILA_TRAIN_MAX_RUNTIME_S") or (1800 if SMOKE else 3 * 86400))


def scheduled_stages(spec: str | None = None) -> list[int]:
    """Stage numbers (1-5) the schedule may re-train, from LONGVILA_TRAIN_SCHEDULE_STAGES."""
    spec = (spec if spec is not None else os.environ.get("LONGVILA_TRAIN_SCHEDULE_STAGES")
            or ("all" if SMOKE else "none")).strip()
    if spec == "all":
        return [1, 2, 3, 4, 5]
    if spec in ("", "none"):
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    known = {k.to_user_string(): n for n, k in enumerate(STAGE_KEYS, start=1)}
    unknown = [s for s in names if s not in known]
    if unknown:
        raise ValueError(f"LONGVILA_TRAIN_SCHEDULE_STAGES names unknown stages {unknown}; known: {sorted(known)}")
    return sorted(known[s] for s in names)


training_job = define_asset_job(
    "training",
    selection=(AssetSelection.groups(GROUP) | AssetSelection.assets(*DATASET_KEYS.values()))
    - AssetSelection.assets("training_lineage_report"),
    tags={"dagster/max_runtime": str(MAX_RUNTIME_S)},
    description="Stage datasets and the five training stages (runs end after dagster/max_runtime).",
)


def stages_to_retrain(instance, lake: LakeResource, enabled: list[int]) -> tuple[list[int], list[str]]:
    """(stages to re-train, one reason line per drifted stage)."""
    from assets.freshness import stage_drift

    first, reasons = None, []
    for n in enabled:
        key = STAGE_KEYS[n - 1]
        drift = stage_drift(instance, lake, key, DATASET_KEYS[n], per_video_inputs(RECIPE, n))
        if drift.trained and drift.moved_on:
            reasons.append(drift.summary(key.to_user_string()))
            first = n if first is None else first
    return ([n for n in enabled if n >= first] if first else []), reasons


_ENABLED = scheduled_stages()


@schedule(job=training_job, cron_schedule=CRON, name="training_schedule",
          default_status=DefaultScheduleStatus.RUNNING if _ENABLED else DefaultScheduleStatus.STOPPED,
          description="Re-trains the enabled stages whose data moved on since they were trained "
                      "(orchestration/schedules.py: LONGVILA_TRAIN_SCHEDULE, LONGVILA_TRAIN_SCHEDULE_STAGES).")
def training_schedule(context: ScheduleEvaluationContext, lake: LakeResource):
    if not _ENABLED:
        return SkipReason("no stage enabled: set LONGVILA_TRAIN_SCHEDULE_STAGES (all, or stage names)")
    stages, reasons = stages_to_retrain(context.instance, lake, _ENABLED)
    if not stages:
        return SkipReason("every enabled stage was trained on the current data")
    for line in reasons:
        context.log.info(line)
    selection = [k for n in stages for k in (DATASET_KEYS[n], STAGE_KEYS[n - 1])]
    names = ",".join(STAGE_KEYS[n - 1].to_user_string() for n in stages)
    return RunRequest(asset_selection=selection, tags={**AUTOMATED_RUN_TAGS, "longvila/retrain": names})
