"""Shard mode (``LONGVILA_PARTITION_MODE=shards``): one partition per shard of videos, not per video.

    curated_shard[s000001..]  (probe, shots, clips, clip and whole-video frames, clip captions, summary and
                               question-answer records of every video of the shard)
        -> stage1_dataset .. stage4_dataset -> stage1..4 checkpoints
        -> long_video_sft_dataset -> stage5_long_sft

Shards are sealed, append-only lists of ``LONGVILA_SHARD_SIZE`` videos (default 1000; `longvila.shards`).
``curated_shard`` reads the source manifest once per run, then curates the shard's videos with
`curation.scaleout.run_shard` on ``LONGVILA_CURATION_ENGINE`` (``local``: in this process; ``ray``: a pool
of ``LONGVILA_CURATION_WORKERS`` Ray actors on the cluster named by ``RAY_ADDRESS``, one captioner each).
Inside a shard, a video whose content hash and code versions are unchanged is skipped, and a bad video is a
quarantined row, not a failed shard. The layer files are those of the per-video assets, so the stage
datasets and their lineage tables read them unchanged.

Not covered in shard mode: annotation sidecars (shards caption every clip with the VLM).
"""


import os
import time

from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    DataVersion,
    Definitions,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.common import md_table
from assets.policies import TRANSIENT_RETRY
from assets.resources import LakeResource
from longvila import shards, sources

SHARDS_PARTITIONS_NAME = "video_shards"
video_shards = DynamicPartitionsDefinition(name=SHARDS_PARTITIONS_NAME)
CURATED_SHARD = AssetKey("curated_shard")
GROUP = "curation"


def shard_mode() -> bool:
    mode = (os.environ.get("LONGVILA_PARTITION_MODE") or "videos").strip().lower()
    if mode not in ("videos", "shards"):
        raise ValueError(f"LONGVILA_PARTITION_MODE={mode!r}: choose videos or shards")
    return mode == "shards"


def shard_size() -> int:
    n = int(os.environ.get("LONGVILA_SHARD_SIZE") or shards.DEFAULT_SHARD_SIZE)
    if n < 1:
        raise ValueError(f"LONGVILA_SHARD_SIZE must be >= 1, got {n}")
    return n


def _engine() -> tuple[str, int]:
    engine = (os.environ.get("LONGVILA_CURATION_ENGINE") or "local").strip().lower()
    return engine, int(os.environ.get("LONGVILA_CURATION_WORKERS") or 2)


def build_shard_defs() -> Definitions:
    from curation.captioning.config import CaptioningConfig
    from curation.captioning.config import code_versions as caption_code_versions
    from curation.config import CurationConfig
    from curation.scaleout import shard_code_versions

    versions = shard_code_versions(CurationConfig.from_env(), CaptioningConfig.from_env())
    code_version = "shard-v1:" + ":".join(f"{k}={v}" for k, v in sorted(versions.items()))

    @asset(key=CURATED_SHARD, partitions_def=video_shards, group_name=GROUP, code_version=code_version,
           retry_policy=TRANSIENT_RETRY, kinds={"video", "parquet"},
           description="Curation of one shard of videos up to QA records (curation.scaleout); per-video rows "
                       "in shards/<shard>/manifest.json, layer files as the per-video assets write them.")
    def curated_shard(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        from curation.scaleout import VideoTask, run_shard, shard_version

        settings, storage = lake.settings(), lake.storage_root
        members = shards.read_index(storage, settings)["members"].get(context.partition_key, [])
        videos = sources.read_manifest(settings)["videos"]  # once per run, not per video
        tasks = [VideoTask(k, videos[k]["url"], videos[k].get("relpath", "")) for k in members
                 if videos.get(k, {}).get("status") == sources.PRESENT]
        engine, workers = _engine()
        t0 = time.perf_counter()
        manifest = run_shard(context.partition_key, tasks, storage, engine=engine, workers=workers,
                             settings=settings)
        bad = [{"video": k, "error": v["error"]} for k, v in manifest["videos"].items() if v["status"] == "quarantined"]
        for row in bad:
            context.log.warning(f"quarantined {row['video']}: {row['error']}")
        return MaterializeResult(
            data_version=DataVersion(shard_version(manifest)),
            metadata={"videos": len(tasks), **manifest["counts"], "engine": engine,
                      "manifest": MetadataValue.path(lake.storage_root + f"/shards/{context.partition_key}"),
                      "quarantined_videos": MetadataValue.md(md_table(bad, limit=20)),
                      "seconds": round(time.perf_counter() - t0, 3)},
        )

    from assets.captions import long_video_sft_defs

    captions_cv = caption_code_versions(CaptioningConfig.from_env())["long_video_sft_dataset"]
    sft_dataset, sft_check = long_video_sft_defs([AssetDep(CURATED_SHARD, partition_mapping=AllPartitionMapping())],
                                                 captions_cv)
    return Definitions(assets=[curated_shard, sft_dataset], asset_checks=[sft_check])


def shard_video_keys(lake: LakeResource) -> list[str]:
    """The videos a dataset takes in shard mode: every curated (ok or skipped) row of every shard manifest."""
    from curation.scaleout import OK, SKIPPED, read_shard_manifest

    settings, storage = lake.settings(), lake.storage_root
    keys = []
    for shard in shards.read_index(storage, settings)["shards"]:
        rows = read_shard_manifest(storage, shard["id"], settings)["videos"]
        keys += [k for k, v in rows.items() if v["status"] in (OK, SKIPPED)]
    return sorted(keys)
