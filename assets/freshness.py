"""How far a stage checkpoint is behind its data, as an asset check the UI shows on every stage.

A checkpoint records which dataset materialisation it consumed (Dagster's ``dagster/input_event_pointer``
and ``dagster/input_data_version`` tags). `stage_drift` compares, for the per-video assets the dataset
reads (stages 1-3: ``clip_captions`` and ``clip_frames``; stage 5: ``video_instructions``; none for generated
data or in shard mode), the data versions the event log held when that dataset was built (the rule of
``longvila lineage --verify``) with the versions it holds now, for the videos present in the source:

* new: a present video with current versions that had none when the dataset was built;
* changed: a video whose versions differ from those of that time (re-curated, re-captioned);
* removed: a video that had versions then and was removed from the source after the checkpoint was trained
  (the source manifest's ``removed_at``);
* dataset_behind: the dataset itself was rebuilt since the checkpoint was trained.

`freshness_check` is the ``trained_on_current_data`` check of a stage (severity WARN: the checkpoint is
still usable). It runs with every materialisation of the stage and, through its automation condition,
every ``LONGVILA_FRESHNESS_CRON`` (default every 10 minutes) once the stage was trained, so the UI turns
it yellow, with the counts, soon after new videos are curated. The training schedule
(`orchestration.schedules`) re-trains the stages whose drift is not zero.

Look-ups are bulk: per per-video asset, two queries for the current versions and about videos / 5,000
paged queries for the versions of the dataset's time, whatever the number of videos.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Optional, Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    AutomationCondition,
    asset_check,
)

from assets.common import data_version, dataset_video_keys, latest_record, versions_as_of
from assets.resources import LakeResource
from longvila import sources

FRESHNESS_CRON = os.environ.get("LONGVILA_FRESHNESS_CRON") or "*/10 * * * *"
CHECK_NAME = "trained_on_current_data"
INPUT_POINTER_TAG = "dagster/input_event_pointer/"
INPUT_VERSION_TAG = "dagster/input_data_version/"


def version_field(asset: AssetKey) -> str:
    """The name of a per-video asset's data version in a video's row of versions."""
    return f"{asset.to_python_identifier()}_data_version"


def latest_versions(instance, asset: AssetKey, partitions: Sequence[str]) -> dict[str, str]:
    """{partition: current data version} of `asset` for `partitions` (two queries)."""
    from dagster._core.events import DagsterEventType

    ids = instance.get_latest_storage_id_by_partition(asset, DagsterEventType.ASSET_MATERIALIZATION,
                                                      set(partitions))
    if not ids:
        return {}
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset, storage_ids=list(ids.values())), limit=len(ids)).records
    return {r.asset_materialization.partition: data_version(r) for r in records}


def _rows(by_asset: dict[AssetKey, dict[str, str]], keys: Iterable[str]) -> dict[str, dict]:
    """{video: {"<asset>_data_version": version}} for the `keys` that have a version of every asset."""
    return {k: {version_field(a): v[k] for a, v in by_asset.items()} for k in keys
            if all(k in v for v in by_asset.values())}


def _removed_since(manifest: dict, since_ts: float) -> set[str]:
    """Videos the source manifest marks removed after the POSIX time `since_ts`."""
    return {r["key"] for r in sources.removed_videos(manifest)
            if r["removed_at"] and datetime.fromisoformat(r["removed_at"]).timestamp() > since_ts}


@dataclass
class Drift:
    trained: bool = False
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    dataset_behind: bool = False

    @property
    def moved_on(self) -> bool:
        return bool(self.new or self.changed or self.removed or self.dataset_behind)

    def summary(self, stage: str) -> str:
        if not self.trained:
            return f"{stage} has not been trained yet"
        behind = "; its dataset was rebuilt since" if self.dataset_behind else ""
        return (f"{len(self.new)} new, {len(self.changed)} changed, {len(self.removed)} removed videos since "
                f"{stage} was trained{behind}")


def stage_drift(instance, lake: LakeResource, stage: AssetKey, dataset: AssetKey,
                per_video: Sequence[AssetKey]) -> Drift:
    """How the data moved on since the latest materialisation of `stage` (module docstring)."""
    trained = latest_record(instance, stage)
    if trained is None:
        return Drift()
    tags = trained.asset_materialization.tags or {}
    pointer = tags.get(INPUT_POINTER_TAG + dataset.to_user_string())
    current_dataset = data_version(latest_record(instance, dataset))
    drift = Drift(trained=True,
                  dataset_behind=current_dataset != tags.get(INPUT_VERSION_TAG + dataset.to_user_string()))
    if per_video:
        present = dataset_video_keys(instance, lake)
        current = _rows({a: latest_versions(instance, a, present) for a in per_video}, present)
        then = {a: versions_as_of(instance, a, int(pointer)) if pointer and pointer.isdigit() else {}
                for a in per_video}
        consumed = _rows(then, set().union(*then.values()))
        drift.new = sorted(set(current) - set(consumed))
        drift.changed = sorted(k for k in set(current) & set(consumed) if current[k] != consumed[k])
        drift.removed = sorted(set(consumed) & _removed_since(lake.read_manifest(), trained.timestamp))
    return drift


def freshness_check(stage: AssetKey, dataset: AssetKey, per_video: Sequence[AssetKey],
                    cron: Optional[str] = None):
    """The ``trained_on_current_data`` check of `stage` (module docstring)."""

    periodically = (AutomationCondition.cron_tick_passed(cron or FRESHNESS_CRON)
                    & ~AutomationCondition.any_deps_missing()).with_label("periodically_once_trained")

    @asset_check(asset=stage, name=CHECK_NAME, automation_condition=periodically,
                 description="the checkpoint was trained on the current data: no video new, changed or removed "
                             "since, and its dataset not rebuilt (WARN otherwise, with the counts)")
    def _check(context, lake: LakeResource) -> AssetCheckResult:
        d = stage_drift(context.instance, lake, stage, dataset, per_video)
        return AssetCheckResult(
            passed=not d.moved_on, severity=AssetCheckSeverity.WARN, description=d.summary(stage.to_user_string()),
            metadata={"new_videos": len(d.new), "changed_videos": len(d.changed), "removed_videos": len(d.removed),
                      "dataset_behind": d.dataset_behind, "trained": d.trained,
                      "examples": ", ".join((d.new + d.changed + d.removed)[:10]) or "none"})

    return _check
