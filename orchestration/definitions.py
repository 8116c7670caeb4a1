"""The one Dagster code location of the project: `defs`.

Merges the `defs` of every module in `ASSET_MODULES` (the asset layers and `orchestration.reports`) with
the shared pieces:

* resources: ``lake`` = `LakeResource.from_env()` (source/storage URLs, S3 endpoint and credentials);
* sensors: ``new_video_sensor`` (registers videos as `videos` partitions and runs their per-video chain,
  see `orchestration.sensors`) and ``automation_sensor`` (evaluates the assets' shared automation
  condition, `assets.policies.ON_NEW_DATA`, every ``LONGVILA_AUTOMATION_INTERVAL_S`` = 15 s, one run per
  partition); both are RUNNING by default and tag their runs ``longvila/automated`` (lower priority, a
  bounded share of the run queue: `orchestration.instance`);
* executor: in-process by default (a video's chain runs in one process; runs run in parallel across
  videos); ``LONGVILA_EXECUTOR=multiprocess`` or ``k8s`` switches it (`orchestration.executors`);
* a ``curation_lineage`` job over the curation group for manual launches and backfills;
* the ``training`` job and ``training_schedule`` (re-trains the stages whose data moved on;
  `orchestration.schedules`).

Load it with ``dagster dev -w workspace.yaml`` (or ``dagster definitions validate -w workspace.yaml``).
DAGSTER_HOME defaults to ``<root>/.dagster``, with the project's dagster.yaml (`orchestration.instance`).
"""

from __future__ import annotations

import os
import warnings
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
from assets.resources import LakeResource
from assets.shards import build_shard_defs, shard_mode

from . import reports
from .executors import executor_from_env
from .instance import AUTOMATED_RUN_TAGS, ensure_dagster_home
from .schedules import training_job, training_schedule
from .sensors import build_new_shard_sensor, build_new_video_sensor

# Every module here exposes `defs: dagster.Definitions`; listed explicitly, in lineage order.
ASSET_MODULES: list[ModuleType] = [curation_assets, captions_assets, training_assets, evaluation_assets, reports]

AUTOMATION_SENSOR_INTERVAL_S = int(os.environ.get("LONGVILA_AUTOMATION_INTERVAL_S") or 15)

with warnings.catch_warnings():  # use_user_code_server is a beta parameter in dagster 1.13
    warnings.filterwarnings("ignore", message=".*use_user_code_server.*")
    automation_sensor = AutomationConditionSensorDefinition(
        name="automation_sensor",
        target=AssetSelection.all(),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=AUTOMATION_SENSOR_INTERVAL_S,
        # evaluated in the code server: the shared condition compares data versions in Python (assets.policies)
        use_user_code_server=True,
        # one run per partition: a backfill spanning videos would fail as a whole if one of them went wrong
        emit_backfills=False,
        run_tags=AUTOMATED_RUN_TAGS,
        description="Evaluates the assets' automation condition (assets.policies.ON_NEW_DATA); its runs have "
        "a lower priority than manual launches and a share of the run queue (orchestration/instance.py).",
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
    """Merged Definitions; arguments override the defaults (tests pass a subset of the layers, an explicit
    lake or executor). Jobs and schedules join only with the layers they target. In shard mode
    (`assets.shards`), curated shards feed the caption datasets and stages 1-4; the per-video curation and
    caption layers, whose work the shards do, are left out."""
    ensure_dagster_home()
    sharded = modules is None and shard_mode()
    layer_defs = ([build_shard_defs(), Definitions(assets=[curation_assets.VIDEO_SOURCE_SPEC]),
                   training_assets.build_training_defs(), evaluation_assets.defs, reports.defs] if sharded
                  else [m.defs for m in (modules or ASSET_MODULES)])
    layers = Definitions.merge(*layer_defs, Definitions(resources={"lake": lake or LakeResource.from_env()}))
    keys = layers.resolve_asset_graph().materializable_asset_keys
    has_curation, has_training = curation_assets.RAW_VIDEO in keys, training_assets.STAGE_KEYS[0] in keys
    new_video = ([build_new_shard_sensor()] if sharded
                 else [build_new_video_sensor(per_video_chain(layers))] if has_curation else [])
    shared = Definitions(
        sensors=[automation_sensor, *new_video],
        jobs=[job for job, present in ((curation_lineage_job, has_curation), (training_job, has_training)) if present],
        schedules=[training_schedule] if has_training else [],
        executor=executor or executor_from_env(),
    )
    return Definitions.merge(layers, shared)


defs = build_defs()
