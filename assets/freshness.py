"""How far a stage checkpoint is behind its data, as an asset check the UI shows on every stage.

A stage dataset records, per video, the data versions of the per-video assets it was built from
(stage 1-3 datasets: ``clip_captions`` and ``clip_frames`` in their manifest's ``inputs``; the
long-video SFT dataset: ``video_instructions`` in its ``video_versions`` metadata). A checkpoint
records which dataset materialisation it consumed (Dagster's ``dagster/input_event_pointer`` tag).
`stage_drift` compares the two with what the instance holds now, for the videos present in the source:

* new: a video with current versions that the consumed dataset did not contain;
* changed: a video whose versions differ from the consumed ones (re-curated, re-captioned);
* removed: a video the dataset contained that is no longer present (or lost its captions);
* dataset_behind: the dataset itself was rebuilt since the checkpoint was trained.

`freshness_check` is the ``trained_on_current_data`` check of a stage (severity WARN: the checkpoint is
still usable). It runs with every materialisation of the stage and, through its automation condition,
every ``LONGVILA_FRESHNESS_CRON`` (default every 10 minutes) once the stage was trained, so the UI turns
it yellow, with the counts, soon after new videos are curated. The training schedule
(`orchestration.schedules`) re-trains the stages whose drift is not zero.

Look-ups are bulk: two instance queries per per-video asset, whatever the number of videos.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    AutomationCondition,
    asset_check,
)

from assets.common import data_version, dataset_video_keys, latest_record, metadata_values
from assets.resources import LakeResource

FRESHNESS_CRON = os.environ.get("LONGVILA_FRESHNESS_CRON") or "*/10 * * * *"
CHECK_NAME = "trained_on_current_data"
INPUT_POINTER_TAG = "dagster/input_event_pointer/"
INPUT_VERSION_TAG = "dagster/input_data_version/"


def version_field(asset: AssetKey) -> str:
    """The name under which datasets record the data version of a per-video asset."""
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


def per_video_versions(instance, keys: Sequence[str], assets: Sequence[AssetKey]) -> dict[str, dict]:
    """{video key: {"<asset>_data_version": version}} for the videos that have every asset materialised."""
    by_asset = {a: latest_versions(instance, a, keys) for a in assets}
    return {k: {version_field(a): by_asset[a][k] for a in assets} for k in keys
            if all(k in by_asset[a] for a in assets)}


def consumed_versions(dataset_metadata: dict, assets: Sequence[AssetKey]) -> dict[str, dict]:
    """The per-video versions a dataset materialisation recorded (see the module docstring)."""
    fields = [version_field(a) for a in assets]
    manifest = dataset_metadata.get("manifest") or {}
    if manifest.get("inputs"):
        return {i["video_key"]: {f: i.get(f) for f in fields} for i in manifest["inputs"] if "video_key" in i}
    return {k: {fields[0]: v} for k, v in (dataset_metadata.get("video_versions") or {}).items()}


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
    consumed_record = None
    if pointer and pointer.isdigit():
        recs = instance.fetch_materializations(AssetRecordsFilter(asset_key=dataset, storage_ids=[int(pointer)]),
                                               limit=1).records
        consumed_record = recs[0] if recs else None
    current_dataset = data_version(latest_record(instance, dataset))
    drift = Drift(trained=True,
                  dataset_behind=current_dataset != tags.get(INPUT_VERSION_TAG + dataset.to_user_string()))
    if per_video:
        consumed = consumed_versions(metadata_values(consumed_record), per_video)
        current = per_video_versions(instance, dataset_video_keys(instance, lake), per_video)
        drift.new = sorted(set(current) - set(consumed))
        drift.changed = sorted(k for k in set(current) & set(consumed) if current[k] != consumed[k])
        drift.removed = sorted(set(consumed) - set(current))
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
