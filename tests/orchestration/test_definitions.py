"""The merged Definitions, resources/config parsing, executors, batch planning and check logic."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DefaultSensorStatus,
    Definitions,
    DynamicPartitionsDefinition,
    EnvVar,
    StaticPartitionsDefinition,
    asset,
)

from assets.curation import clip_problems, tile_problems
from orchestration.demo import plan_batches
from orchestration.executors import executor_from_env
from assets.resources import LakeResource
from curation.config import CurationConfig

REPO = Path(__file__).resolve().parents[2]
CURATION = {"raw_video", "video_probe", "video_shots", "video_clips", "clip_frames", "video_frames"}


def test_merged_definitions():
    from orchestration.definitions import ASSET_MODULES, defs, per_video_chain

    g = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in g.materializable_asset_keys}
    assert CURATION <= keys
    for k in CURATION:
        node = g.get(AssetKey(k))
        assert node.partitions_def.name == "videos" and node.code_version
        if k != "raw_video":
            assert node.automation_condition is not None
    checks = {c.name for c in g.asset_check_keys}
    assert {"probe_is_sane", "shots_tile_video", "clips_within_bounds", "clip_frame_counts",
            "video_frame_count"} <= checks
    sensors = {s.name: s for s in defs.sensors}
    assert sensors["new_video_sensor"].default_status == DefaultSensorStatus.RUNNING
    assert sensors["automation_sensor"].default_status == DefaultSensorStatus.RUNNING
    assert defs.resolve_job_def("curation_lineage") is not None
    assert isinstance(defs.resources["lake"], LakeResource)
    assert all(hasattr(m, "defs") for m in ASSET_MODULES)
    chain = [k.to_user_string() for k in per_video_chain(defs)]
    assert chain[0] == "raw_video" and CURATION <= set(chain) and "video_instructions" in chain
    assert "long_video_sft_dataset" not in chain


@pytest.mark.slow
def test_dagster_definitions_validate(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run([str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w",
                           "workspace.yaml"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation successful" in proc.stderr + proc.stdout


def test_executors(monkeypatch):
    assert executor_from_env("multiprocess").name == "multiprocess"
    assert executor_from_env("in_process").name == "in_process"
    monkeypatch.setenv("LONGVILA_EXECUTOR", "in-process")
    assert executor_from_env().name == "in_process"
    with pytest.raises(ValueError, match="LONGVILA_EXECUTOR"):
        executor_from_env("celery-on-mars")
    try:
        import dagster_k8s  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="dagster-k8s"):
            executor_from_env("k8s")
    else:
        assert executor_from_env("k8s").name == "k8s_job_executor"


def test_lake_resource_env_and_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGVILA_SOURCE", "s3://bucket/raw/")
    monkeypatch.setenv("LONGVILA_STORAGE", str(tmp_path / "lake"))
    monkeypatch.setenv("LONGVILA_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    lake = LakeResource.from_env()
    assert isinstance(lake.source, EnvVar) and lake.source.env_var_name == "LONGVILA_SOURCE"
    assert lake.source_root == "s3://bucket/raw"
    st = lake.settings()
    assert st.storage_options_for("s3://bucket/x") == {
        "key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    assert lake.layer_url("shots", "a-0123abcd") == f"{tmp_path}/lake/shots/a-0123abcd.parquet"
    assert lake.read_manifest()["videos"] == {}
    explicit = LakeResource(source="/x", storage="/y", s3_endpoint_url="http://e")
    assert explicit.settings().s3.endpoint_url == "http://e" and explicit.settings().storage == "/y"


def test_curation_config(monkeypatch):
    monkeypatch.setenv("LONGVILA_SHOT_DETECTOR", "content")
    monkeypatch.setenv("LONGVILA_SHOT_DETECTOR_OPTIONS", '{"threshold": 30}')
    monkeypatch.setenv("LONGVILA_MAX_CLIP_S", "5")
    monkeypatch.setenv("LONGVILA_WRITE_CLIP_FILES", "yes")
    cfg = CurationConfig.from_env()
    assert cfg.detector == "content" and cfg.detector_options == {"threshold": 30}
    assert cfg.max_clip_s == 5.0 and cfg.write_clip_files is True and cfg.frames_per_clip == 8
    with pytest.raises(ValueError):
        CurationConfig(min_clip_s=3, max_clip_s=2)
    from assets.curation import code_versions

    a, b = code_versions(CurationConfig()), code_versions(cfg)
    assert a["video_shots"] != b["video_shots"] and a["video_clips"] != b["video_clips"]
    assert a["video_probe"] == b["video_probe"] and a["video_frames"] == b["video_frames"]
    assert "clip_files" in b


def test_plan_batches_orders_by_dependency_and_partitioning():
    vids = DynamicPartitionsDefinition(name="videos")
    stages = StaticPartitionsDefinition(["s1", "s2"])

    @asset(partitions_def=vids)
    def a(): ...

    @asset(partitions_def=vids, deps=[a])
    def b(): ...

    @asset(deps=[b])
    def dataset(): ...

    @asset(partitions_def=stages, deps=[dataset])
    def train(): ...

    @asset(deps=[train])
    def report(): ...

    @asset(partitions_def=vids, deps=[a])
    def c(): ...

    g = Definitions(assets=[a, b, c, dataset, train, report]).resolve_asset_graph()
    batches = [(getattr(p, "name", None) or (p and "static"), [k.to_user_string() for k in ks])
               for p, ks in plan_batches(g, g.materializable_asset_keys)]
    assert batches == [("videos", ["a", "b", "c"]), (None, ["dataset"]), ("static", ["train"]), (None, ["report"])]


def test_check_logic():
    assert tile_problems([(0, 10), (10, 25)], 25) == []
    assert any("gap" in p for p in tile_problems([(0, 10), (11, 25)], 25))
    assert any("overlap" in p for p in tile_problems([(0, 10), (9, 25)], 25))
    assert any("not 0" in p for p in tile_problems([(1, 25)], 25))
    assert any("video has 30" in p for p in tile_problems([(0, 25)], 30))
    assert tile_problems([], 5)

    from curation.clips import Clip
    from curation.shots import Shot

    shots = {0: Shot(0, 0, 100, 0.0, 4.0), 1: Shot(1, 100, 400, 4.0, 16.0)}
    ok = [Clip(0, 0, 0, 100, 0.0, 4.0), Clip(1, 1, 100, 350, 4.0, 14.0)]
    assert clip_problems(ok, shots, 1.0, 10.0) == []
    bad = [Clip(0, 0, 50, 150, 2.0, 6.0), Clip(1, 1, 100, 110, 4.0, 4.4), Clip(2, 7, 0, 1, 0.0, 2.0)]
    probs = clip_problems(bad, shots, 1.0, 10.0)
    assert any("leaves shot 0" in p for p in probs)
    assert any("clip 1 lasts 0.400s" in p for p in probs)
    assert any("unknown shot 7" in p for p in probs)


def test_clip_files_layer_when_enabled(tmp_path, small_video_cache):
    import json
    import shutil
    import types

    from dagster import DagsterInstance, in_process_executor

    from assets.curation import build_curation_defs
    from orchestration.definitions import build_defs
    from orchestration.demo import run_batch
    from orchestration.sensors import register_videos

    src = tmp_path / "raw"
    src.mkdir()
    shutil.copyfile(small_video_cache[0], src / "v.mp4")
    lake = LakeResource(source=str(src), storage=str(tmp_path / "lake"))
    mod = types.SimpleNamespace(defs=build_curation_defs(CurationConfig(write_clip_files=True)))
    defs = build_defs(modules=[mod], lake=lake, executor=in_process_executor)
    g = defs.resolve_asset_graph()
    assert AssetKey("clip_files") in g.materializable_asset_keys
    inst = DagsterInstance.ephemeral()
    (key,) = register_videos(inst, lake).new
    o = run_batch(defs, inst, list(g.materializable_asset_keys), key, key)
    assert o.success, o.failures
    index = json.loads((tmp_path / "lake" / "clip_files" / key / "index.json").read_text())
    assert len(index["clips"]) == 2
    for rec in index["clips"]:
        assert Path(rec["url"]).is_file() and rec["frames"] == 30


def test_project_instance_config(tmp_path, monkeypatch):
    """The dagster.yaml the project writes: queued runs with a share for automation, priorities, the training
    pool at one slot, run monitoring, the warm-process launcher; a user's own file is kept."""
    from dagster import DagsterInstance

    from orchestration.instance import AUTOMATED_TAG, ensure_dagster_home
    from orchestration.launcher import WarmRunLauncher

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = ensure_dagster_home()
    inst = DagsterInstance.from_config(home)
    queue = inst.get_concurrency_config().run_queue_config
    cpus = os.cpu_count() or 1
    assert queue.max_concurrent_runs == cpus + 1
    assert [(t["key"], t["value"], t["limit"]) for t in queue.tag_concurrency_limits] == [(AUTOMATED_TAG, "true", cpus)]
    assert inst.get_concurrency_config().pool_config.default_pool_limit == 1
    # the stages share the `training` pool, which therefore has one slot: one stage on the GPUs at a time
    from assets.training import STAGE_KEYS, build_training_defs

    assert {a.op.pool for a in build_training_defs().assets if a.key in STAGE_KEYS} == {"training"}
    inst.event_log_storage.initialize_concurrency_limit_to_default("training")
    assert inst.event_log_storage.get_concurrency_info("training").slot_count == 1
    assert inst.run_monitoring_enabled and isinstance(inst.run_launcher, WarmRunLauncher)
    inst.dispose()
    own = Path(home) / "dagster.yaml"
    own.write_text("telemetry:\n  enabled: false\n")
    ensure_dagster_home()
    assert own.read_text() == "telemetry:\n  enabled: false\n"
