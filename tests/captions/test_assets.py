"""The caption layer's Dagster assets and checks on a lake made by the real curation library from
synthetic videos, plus code versions (prompt edits mark exactly the affected assets stale)."""

import json
import shutil

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def curated_lake(tmp_path_factory):
    """Two short synthetic videos run through probe -> shots -> clips -> clip/video frames."""
    from curation import synth
    from curation.frames import sample_video_frames
    from longvila import io as lio
    from longvila.keys import partition_key_for
    from longvila.layout import layer_path

    from .conftest import curate_layers

    root = tmp_path_factory.mktemp("lake")
    raw, storage = root / "raw", str(root / "lake")
    raw.mkdir()
    plans = {
        "a.mp4": [(2.0, synth.SOURCES[0]), (3.0, synth.SOURCES[2]), (2.0, synth.SOURCES[5])],
        "b.mp4": [(3.0, synth.SOURCES[1]), (3.0, synth.SOURCES[9])],
    }
    keys = {}
    for name, shots in plans.items():
        path = str(raw / name)
        synth.make_synthetic_video(path, shots, fps=10, size=(96, 64))
        key = partition_key_for(name)
        keys[key] = path
        curate_layers(storage, key, path, max_clip_s=2.0, min_clip_s=0.5)
        lio.write_parquet(sample_video_frames(path, fps=1.0, max_frames=8, size=32),
                          layer_path(storage, "video_frames", key))
    return {"storage": storage, "keys": keys, "root": root}


def _defs(smoke_paths, **cfg_changes):
    from pathlib import Path

    from assets.captions import build_caption_defs
    from curation.captioning.config import CaptioningConfig

    cfg = CaptioningConfig(models_dir=str(Path(smoke_paths.root).parent), caption_max_new_tokens=12,
                           summary_max_new_tokens=200, qa_max_new_tokens=600, **cfg_changes)
    return build_caption_defs(cfg), cfg


def _materialize(defs, instance, storage, partition=None, caption_models=None, selection=None):
    from dagster import materialize

    from assets.captions import LONG_VIDEO_SFT
    from assets.resources import LakeResource

    assets = [a for a in defs.assets if (LONG_VIDEO_SFT in a.keys) == (partition is None)]
    keys = {ak for a in assets for ak in a.keys}
    checks = [c for c in defs.asset_checks if any(k.asset_key in keys for k in c.check_keys)]
    resources = {"lake": LakeResource(storage=storage)}
    if caption_models is not None:
        resources["caption_models"] = caption_models
    else:
        resources["caption_models"] = defs.resources["caption_models"]
    return materialize([*assets, *checks], partition_key=partition, instance=instance, resources=resources,
                       raise_on_error=False, selection=selection)


def test_caption_assets_end_to_end(curated_lake, smoke_paths):
    from dagster import DagsterInstance

    from curation.captioning.annotate import QUESTION_TYPES, read_jsonl
    from curation.captioning.captioner import CAPTIONS_SCHEMA
    from curation.captioning.dataset import load_long_video_sft
    from curation.schemas import table_to_clips
    from longvila import io as lio
    from longvila.layout import layer_path

    storage, keys = curated_lake["storage"], sorted(curated_lake["keys"])
    defs, cfg = _defs(smoke_paths)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", keys)
    total_records = 0
    for key in keys:
        res = _materialize(defs, instance, storage, partition=key)
        assert res.success, [e.message for e in res.all_events if e.is_failure]
        evals = {e.check_name: e for e in res.get_asset_check_evaluations()}
        assert evals["every_clip_captioned"].passed and evals["no_empty_captions"].passed
        assert evals["timestamps_in_bounds"].passed
        assert {"no_duplicate_captions", "question_types_covered", "summary_is_valid",
                "instructions_generated"} <= set(evals)
        # the coverage check reports which of the seven types are absent
        absent = evals["question_types_covered"].metadata["absent"].value
        assert evals["question_types_covered"].passed == (absent == "none")
        caps = lio.read_parquet(layer_path(storage, "captions", key))
        clips = table_to_clips(lio.read_parquet(layer_path(storage, "clips", key)))
        assert caps.schema.equals(CAPTIONS_SCHEMA, check_metadata=False)
        assert caps.column("clip_index").to_pylist() == [c.index for c in clips]
        summary = lio.read_json(layer_path(storage, "summaries", key))
        assert summary["key"] == key and "ok" in summary
        recs = read_jsonl(lio.read_bytes(layer_path(storage, "instructions", key)).decode())
        total_records += len(recs)
        duration = lio.read_json(layer_path(storage, "probe", key))["duration_s"]
        for r in recs:
            assert r["video_key"] == key and r["question_type"] in (*QUESTION_TYPES, "Caption")
            assert 0 <= r["frames"]["start_s"] <= r["frames"]["end_s"] <= duration + 1
        # data versions are content hashes of what was written
        mat = res.asset_materializations_for_node("clip_captions")[0]
        assert mat.tags["dagster/data_version"] == __import__("hashlib").sha256(
            lio.read_bytes(layer_path(storage, "captions", key))).hexdigest()
    assert total_records > 0  # smoke models are deterministic (greedy, then seeded sampling)
    _check_prompt_edit_staleness(smoke_paths, instance, keys, storage)
    res = _materialize(defs, instance, storage)
    assert res.success
    assert all(e.passed for e in res.get_asset_check_evaluations()) == (total_records > 0)
    manifest, records = load_long_video_sft(storage)
    assert manifest["num_records"] == len(records) == total_records
    assert set(manifest["videos"]) == set(keys) and not manifest["missing"]
    for key in keys:
        data = lio.read_bytes(layer_path(storage, "instructions", key))
        assert manifest["videos"][key]["data_version"] == __import__("hashlib").sha256(data).hexdigest()


def _check_prompt_edit_staleness(smoke_paths, instance, keys, storage):
    """Through Dagster's own stale-status machinery: nothing is stale after the runs; editing the QA
    prompt makes exactly video_instructions stale in every partition."""
    import tempfile
    from pathlib import Path

    from dagster import Definitions

    from assets.captions import CLIP_CAPTIONS, VIDEO_INSTRUCTIONS, VIDEO_SUMMARY
    from curation.captioning.prompts import PROMPT_DIR
    from assets.resources import LakeResource
    from orchestration.staleness import stale_report

    per_video = [CLIP_CAPTIONS, VIDEO_SUMMARY, VIDEO_INSTRUCTIONS]
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(PROMPT_DIR, d, dirs_exist_ok=True)
        for edited in (False, True):
            if edited:
                qa = Path(d) / "video_qa.v1.txt"
                qa.write_text(qa.read_text() + "Keep answers short.\n")
            defs, _ = _defs(smoke_paths, prompts_dir=d)
            merged = Definitions.merge(defs, Definitions(resources={"lake": LakeResource(storage=storage)}))
            rep = stale_report(merged, instance, keys, asset_keys=per_video)
            for key in keys:
                assert rep.stale_assets(key) == ({"video_instructions"} if edited else set())


def test_unreachable_captioning_server_fails_the_partition_and_writes_nothing(curated_lake, smoke_paths, tmp_path,
                                                                              unused_port):
    from dagster import DagsterInstance

    from assets.captions import CaptionModelsResource
    from longvila import io as lio
    from longvila.layout import layer_path

    storage = str(tmp_path / "lake")
    shutil.copytree(curated_lake["storage"], storage)
    key = sorted(curated_lake["keys"])[0]
    for layer in ("captions", "summaries", "instructions"):
        p = layer_path(storage, layer, key)
        if lio.exists(p):
            __import__("os").unlink(p)
    defs, _ = _defs(smoke_paths)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", [key])
    models = CaptionModelsResource(vlm_backend="openai", vlm_model="m", vlm_endpoint=f"http://127.0.0.1:{unused_port}/v1",
                                   max_retries=1, timeout_s=2)
    res = _materialize(defs, instance, storage, partition=key, caption_models=models)
    assert not res.success
    # a transient fault: retried with backoff (assets.policies.TRANSIENT_RETRY), then the partition fails
    retries = [e for e in res.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 3
    failures = [e for e in res.all_events if e.is_step_failure]
    assert failures and "unavailable" in failures[0].event_specific_data.user_failure_data.metadata["reason"].text
    assert not lio.exists(layer_path(storage, "captions", key))


def test_prompt_edit_marks_only_its_assets_stale(tmp_path):
    from curation.captioning.config import CaptioningConfig, ModelSettings, code_versions
    from curation.captioning.prompts import PROMPT_DIR

    d = tmp_path / "prompts"
    shutil.copytree(PROMPT_DIR, d)
    cfg = CaptioningConfig(prompts_dir=str(d))
    before = code_versions(cfg)
    assert before == code_versions(CaptioningConfig())  # same files, same versions
    (d / "video_qa.v1.txt").write_text((d / "video_qa.v1.txt").read_text() + "\nBe brief.\n")
    after = code_versions(cfg)
    assert [k for k in before if before[k] != after[k]] == ["video_instructions"]
    schema = json.loads((d / "video_summary.v1.schema.json").read_text())
    schema["properties"]["title"]["maxLength"] = 60
    (d / "video_summary.v1.schema.json").write_text(json.dumps(schema))
    after2 = code_versions(cfg)
    assert [k for k in after if after[k] != after2[k]] == ["video_summary"]
    other_vlm = code_versions(CaptioningConfig(vlm=ModelSettings(model="Qwen/Qwen2-VL-2B-Instruct")))
    assert [k for k in before if before[k] != other_vlm[k]] == ["clip_captions"]


def test_clip_captions_through_openai_compatible_server(curated_lake, smoke_paths, server, tmp_path):
    """The asset with the HTTP backend against the real loopback server process."""
    from dagster import AssetSelection, DagsterInstance

    from assets.captions import CLIP_CAPTIONS, CaptionModelsResource
    from longvila import io as lio
    from longvila.layout import layer_path

    server.fault("none")
    storage = str(tmp_path / "lake")
    shutil.copytree(curated_lake["storage"], storage)
    key = sorted(curated_lake["keys"])[1]
    defs, _ = _defs(smoke_paths)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", [key])
    models = CaptionModelsResource(vlm_backend="openai", vlm_model="smoke-vlm", vlm_endpoint=server.base_url,
                                   concurrency=3)
    res = _materialize(defs, instance, storage, partition=key, caption_models=models,
                       selection=AssetSelection.assets(CLIP_CAPTIONS) | AssetSelection.checks_for_assets(CLIP_CAPTIONS))
    assert res.success
    caps = lio.read_parquet(layer_path(storage, "captions", key)).to_pydict()
    assert all(caps["ok"]) and all(m == f"smoke-vlm@{server.base_url}" for m in caps["model"])
    assert {e.check_name: e.passed for e in res.get_asset_check_evaluations()}["every_clip_captioned"]


@pytest.mark.s3
def test_caption_assets_and_dataset_on_s3(curated_lake, smoke_paths, moto_endpoint, monkeypatch):
    """The whole caption layer with the lake on S3 (moto_server through s3fs)."""
    import os

    import boto3
    from dagster import DagsterInstance

    from curation.captioning.dataset import load_long_video_sft
    from longvila import io as lio
    from longvila.layout import layer_path
    from longvila.settings import S3Options, Settings
    from assets.resources import LakeResource

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = "captions-test"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    storage = f"s3://{bucket}/lake"
    settings = Settings(storage=storage, s3=S3Options(endpoint_url=moto_endpoint, key="testing", secret="testing",
                                                      region="us-east-1"))
    key = sorted(curated_lake["keys"])[0]
    for layer in ("probe", "clips", "clip_frames", "video_frames"):
        local = layer_path(curated_lake["storage"], layer, key)
        lio.write_bytes(layer_path(storage, layer, key), open(local, "rb").read(), settings)
    defs, _ = _defs(smoke_paths)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", [key])
    lake = LakeResource(storage=storage, s3_endpoint_url=moto_endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", aws_region="us-east-1")
    from dagster import materialize

    per_video = [a for a in defs.assets if a.partitions_def is not None]
    assert len(per_video) == 3
    res = materialize(per_video, partition_key=key, instance=instance,
                      resources={"lake": lake, "caption_models": defs.resources["caption_models"]},
                      raise_on_error=False)
    assert res.success, [e.message for e in res.all_events if e.is_failure]
    res = materialize([a for a in defs.assets if "long_video_sft_dataset" in a.key.to_user_string()], instance=instance,
                      resources={"lake": lake}, raise_on_error=False)
    assert res.success
    for layer in ("captions", "summaries", "instructions"):
        assert lio.exists(layer_path(storage, layer, key), settings)
    manifest, records = load_long_video_sft(storage, settings)
    assert list(manifest["videos"]) == [key] and manifest["num_records"] == len(records) > 0
    assert not os.path.exists(os.path.join(os.getcwd(), bucket))


def test_invalid_llm_replies_become_the_videos_failure_record(curated_lake, smoke_paths, server, tmp_path):
    """Replies that stay unparseable after the retries: the runs succeed, the video's summary and
    instructions are failure records, the checks say so, and the dataset lists the video as failed."""
    from dagster import DagsterInstance

    from assets.captions import CaptionModelsResource
    from curation.captioning.dataset import instructions_report_path, load_long_video_sft
    from longvila import io as lio
    from longvila.layout import layer_path

    storage = str(tmp_path / "lake")
    shutil.copytree(curated_lake["storage"], storage)
    key = sorted(curated_lake["keys"])[0]
    defs, _ = _defs(smoke_paths)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", [key])
    models = CaptionModelsResource(llm_backend="openai", llm_model="smoke-llm", llm_endpoint=server.base_url,
                                   models_dir=str(__import__("pathlib").Path(smoke_paths.root).parent))
    server.fault("invalid_json", count=-1)
    try:
        res = _materialize(defs, instance, storage, partition=key, caption_models=models)
    finally:
        server.fault("none")
    assert res.success
    evals = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
    assert evals["every_clip_captioned"] and not evals["summary_is_valid"] and not evals["instructions_generated"]
    summary = lio.read_json(layer_path(storage, "summaries", key))
    assert summary["ok"] is False and summary["attempts"] == 3
    assert "unparseable JSON" in summary["error"] and key in summary["error"]
    report = lio.read_json(instructions_report_path(storage, key))
    assert report["ok"] is False and report["num_records"] == 0
    assert lio.read_bytes(layer_path(storage, "instructions", key)) == b""
    assert _materialize(defs, instance, storage).success
    manifest, records = load_long_video_sft(storage)
    assert manifest["failed"] == {key: report["error"]} and records == []


def test_wrong_model_name_fails_the_partition_not_retryable(curated_lake, smoke_paths, server, tmp_path):
    from dagster import AssetSelection, DagsterInstance

    from assets.captions import CLIP_CAPTIONS, CaptionModelsResource
    from longvila import io as lio
    from longvila.layout import layer_path

    server.fault("none")
    storage = str(tmp_path / "lake")
    shutil.copytree(curated_lake["storage"], storage)
    key = sorted(curated_lake["keys"])[1]
    for p in (layer_path(storage, "captions", key),):
        if lio.exists(p):
            __import__("os").unlink(p)
    defs, _ = _defs(smoke_paths)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", [key])
    models = CaptionModelsResource(vlm_backend="openai", vlm_model="no-such-vlm", vlm_endpoint=server.base_url)
    res = _materialize(defs, instance, storage, partition=key, caption_models=models,
                       selection=AssetSelection.assets(CLIP_CAPTIONS))
    assert not res.success
    err = [e for e in res.all_events if e.is_step_failure][0].event_specific_data.error.message
    assert "config_error" in err and "no-such-vlm" in err
    assert not lio.exists(layer_path(storage, "captions", key))
