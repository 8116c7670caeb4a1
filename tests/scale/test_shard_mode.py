"""Shard mode through Dagster: the sensor appends videos to sealed shards, curated_shard curates a shard
(a bad video is a quarantined row, the shard succeeds), the stage-1 dataset, the stage-5 long-video SFT
dataset and the lineage audit read the shards' videos, and a changed video re-runs only its own shard."""

from __future__ import annotations

import shutil

import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context, in_process_executor

import orchestration.definitions  # noqa: F401  (the module's own `defs` is built in the default mode, not this test's)
from longvila.keys import partition_key_for

SMALL = dict(fps=25, size=(160, 96))


@pytest.mark.slow
def test_shard_mode_end_to_end(tmp_path, monkeypatch, tmp_path_factory):
    from curation.synth import SOURCES, make_synthetic_video

    src = tmp_path / "raw"
    src.mkdir()
    for i in range(3):
        make_synthetic_video(str(src / f"v{i}.mp4"), [(1.2, SOURCES[i]), (1.2, SOURCES[(i + 2) % len(SOURCES)])],
                             **SMALL)
    (src / "v3.mp4").write_bytes(b"broken")
    monkeypatch.setenv("LONGVILA_PARTITION_MODE", "shards")
    monkeypatch.setenv("LONGVILA_SHARD_SIZE", "2")
    monkeypatch.setenv("LONGVILA_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "smoke-models"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    from assets.resources import LakeResource
    from orchestration.definitions import build_defs
    from orchestration.demo import run_batch
    from orchestration.lineage import lineage
    from orchestration.sensors import evaluate_new_shards

    lake = LakeResource(source=str(src), storage=str(tmp_path / "lake"))
    defs = build_defs(lake=lake, executor=in_process_executor)
    graph = defs.resolve_asset_graph()
    assert AssetKey("curated_shard") in graph.get(AssetKey("stage1_dataset")).parent_keys
    every = graph.get_all_asset_keys()
    assert AssetKey("raw_video") not in every and AssetKey("video_source") in every
    with DagsterInstance.ephemeral() as inst:
        def tick(cursor):
            res = evaluate_new_shards(build_sensor_context(instance=inst, cursor=cursor, resources={"lake": lake}),
                                      lake)
            for req in res.dynamic_partitions_requests:
                inst.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            return res

        res = tick(None)
        assert inst.get_dynamic_partitions("video_shards") == ["s000001", "s000002"]
        assert sorted(r.partition_key for r in res.run_requests) == ["s000001", "s000002"]
        for shard in ("s000001", "s000002"):
            outcome = run_batch(defs, inst, [AssetKey("curated_shard")], shard, shard)
            assert outcome.success, outcome.failures
        mat = inst.get_latest_materialization_event(AssetKey("curated_shard")).asset_materialization
        assert mat.partition == "s000002" and mat.metadata["quarantined"].value == 1 and mat.metadata["ok"].value == 1
        outcome = run_batch(defs, inst, [AssetKey("stage1_dataset")], None, "stage1_dataset")
        assert outcome.success, outcome.failures
        rep = lineage(inst, "stage1_dataset")
        assert sorted(v["video_key"] for v in rep["raw_videos"]) == sorted(partition_key_for(f"v{i}.mp4")
                                                                            for i in range(3))
        assert {u["how"] for n in rep["nodes"] for u in n["upstream"]} == {"lineage-table"}
        # stage 5's long-video SFT data from the shards' summaries and QA records
        outcome = run_batch(defs, inst, [AssetKey("long_video_sft_dataset")], None, "long_video_sft")
        assert outcome.success, outcome.failures
        sft = inst.get_latest_materialization_event(AssetKey("long_video_sft_dataset")).asset_materialization
        assert sft.metadata["num_videos"].value == 3 and sft.metadata["num_records"].value >= 3
        assert sorted(v["video_key"] for v in lineage(inst, "long_video_sft_dataset")["raw_videos"]) == sorted(
            partition_key_for(f"v{i}.mp4") for i in range(3))
        # --verify: the rows against the shard manifests, the manifests against curated_shard's data versions
        assert lineage(inst, "stage1_dataset", verify=True)["unresolved"] == []
        import json

        man_path = tmp_path / "lake" / "shards" / "s000001" / "manifest.json"
        saved = man_path.read_text()
        man = json.loads(saved)
        first = sorted(man["videos"])[0]
        man["videos"][first]["outputs"]["clip_captions"] = "0" * 64
        man_path.write_text(json.dumps(man))
        problems = lineage(inst, "stage1_dataset", verify=True)["unresolved"]
        assert any("shards/s000001/manifest.json is not the one" in p for p in problems)
        assert any(f"clip_captions[{first}]" in p for p in problems)
        man_path.write_text(saved)
        # a changed video: only its shard is requested
        shutil.copy(src / "v0.mp4", src / "v2.mp4")
        res2 = tick(res.cursor)
        assert [r.partition_key for r in res2.run_requests] == ["s000002"]
        assert tick(res2.cursor).run_requests == []
