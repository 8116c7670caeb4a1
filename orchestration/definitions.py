"""The one Dagster code location of the project: `defs`.

Merges the `defs` of every asset module in `ASSET_MODULES` with the shared pieces:

* resources: ``lake`` = `LakeResource.from_env()` (source/storage URLs, S3 endpoint and credentials);
* sensors: ``new_video_sensor`` (registers videos as `videos` partitions, see
  `orchestration.sensors`) and ``automation_sensor`` (evaluates the assets' `AutomationCondition`s,
  e.g. eager curation layers); both are RUNNING by default;
* executor: multiprocess by default; ``LONGVILA_EXECUTOR=in_process`` or ``k8s`` switches it
  (`orchestration.executors`);
* a ``curation_lineage`` job over the curation group for manual launches and backfills.

Load it with ``dagster dev -w workspace.yaml`` (or ``dagster definitions validate -w workspace.yaml``).
DAGSTER_HOME defaults to ``<root>/.dagster`` (`longvila.settings.ensure_dagster_home`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Optional

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    ExecutorDefinition,
    define_asset_job,
)

from assets import captions as captions_assets
from assets import curation as curation_assets
from assets import evaluation as evaluation_assets
from assets import training as training_assets
from longvila.settings import ensure_dagster_home

from .executors import executor_from_env
from .resources import LakeResource
from .sensors import new_video_sensor

# Every module here exposes `defs: dagster.Definitions` (and optionally `demo_summary(instance)`).
# Listed explicitly, in lineage order; a layer joins the list when its module exists.
ASSET_MODULES: list[ModuleType] = [curation_assets, captions_assets, training_assets, evaluation_assets]

AUTOMATION_SENSOR_INTERVAL_S = 30

automation_sensor = AutomationConditionSensorDefinition(
    name="automation_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_SENSOR_INTERVAL_S,
    description="Evaluates the assets' automation conditions (eager curation layers, ...).",
)

curation_lineage_job = define_asset_job(
    "curation_lineage",
    selection=AssetSelection.groups(curation_assets.GROUP),  # partitioned by `videos` (inferred)
    description="Every curation asset of one video partition (manual launches, backfills).",
)


def build_defs(
    modules: Optional[list[ModuleType]] = None,
    lake: Optional[LakeResource] = None,
    executor: Optional[ExecutorDefinition] = None,
) -> Definitions:
    """Merged Definitions; arguments override the defaults (tests pass an in-process executor)."""
    ensure_dagster_home()
    shared = Definitions(
        resources={"lake": lake or LakeResource.from_env()},
        sensors=[new_video_sensor, automation_sensor],
        jobs=[curation_lineage_job],
        executor=executor or executor_from_env(),
    )
    return Definitions.merge(*[m.defs for m in (modules or ASSET_MODULES)], shared)


defs = build_defs()
