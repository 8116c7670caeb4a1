"""The one Dagster code location of the project: `defs`.

Merges the `defs` of every module in `ASSET_MODULES` (the asset layers and `orchestration.reports`) with
the shared pieces:

* resources: ``lake`` = `LakeResource.from_env()` (source/storage URLs, S3 endpoint and credentials);
* sensors: ``new_video_sensor`` (registers videos as `videos` partitions and runs their per-video chain,
  see `orchestration.sensors`) and ``automation_sensor`` (evaluates the assets' shared automation
  condition, `assets.policies.ON_NEW_DATA`); both are RUNNING by default;
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
    AssetKey,
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
from assets.partitions import videos
from assets.shards import build_shard_defs, shard_mode
from assets.resources import LakeResource
from longvila.settings import ensure_dagster_home

from . import reports
from .executors import executor_from_env
from .sensors import build_new_shard_sensor, build_new_video_sensor

# Every module here exposes `defs: dagster.Definitions`; listed explicitly, in lineage order.
ASSET_MODULES: list[ModuleType] = [curation_assets, captions_assets, training_assets, evaluation_assets, reports]

AUTOMATION_SENSOR_INTERVAL_S = 30

automation_sensor = AutomationConditionSensorDefinition(
    name="automation_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_SENSOR_INTERVAL_S,
    description="Evaluates the assets' automation condition (assets.policies.ON_NEW_DATA).",
)

curation_lineage_job = define_asset_job(
    "curation_lineage",
    selection=AssetSelection.groups(curation_assets.GROUP),  # partitioned by `videos` (inferred)
    description="Every curation asset of one video partition (manual launches, backfills).",
)


def per_video_chain(assets_defs: Definitions) -> list[AssetKey]:
    """The materialisable assets partitioned by `videos`, upstream first (raw_video ... captions)."""
    graph = assets_defs.resolve_asset_graph()
    return [k for k in graph.toposorted_asset_keys
            if graph.get(k).is_materializable and getattr(graph.get(k).partitions_def, "name", None) == videos.name]


def build_defs(
    modules: Optional[list[ModuleType]] = None,
    lake: Optional[LakeResource] = None,
    executor: Optional[ExecutorDefinition] = None,
) -> Definitions:
    """Merged Definitions; arguments override the defaults (tests pass an in-process executor)."""
    ensure_dagster_home()
    if modules is None and shard_mode():
        return _shard_defs(lake, executor)
    layers = Definitions.merge(*[m.defs for m in (modules or ASSET_MODULES)],
                               Definitions(resources={"lake": lake or LakeResource.from_env()}))
    shared = Definitions(
        sensors=[build_new_video_sensor(per_video_chain(layers)), automation_sensor],
        jobs=[curation_lineage_job],
        executor=executor or executor_from_env(),
    )
    return Definitions.merge(layers, shared)


def _shard_defs(lake: Optional[LakeResource], executor: Optional[ExecutorDefinition]) -> Definitions:
    """Shard mode (`assets.shards`): curated shards feed the caption datasets and stages 1-4; the per-video
    curation and caption layers, whose work the shards do, are left out."""
    return Definitions.merge(
        build_shard_defs(), training_assets.build_training_defs(), evaluation_assets.defs, reports.defs,
        Definitions(resources={"lake": lake or LakeResource.from_env()}, sensors=[build_new_shard_sensor(),
                                                                                automation_sensor],
                    executor=executor or executor_from_env()))


defs = build_defs()
