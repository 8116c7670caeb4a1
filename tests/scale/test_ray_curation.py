"""Curation of a shard of videos by a worker pool (curation.scaleout): in-process and on a local 2-node Ray
cluster; per-video content-hash skipping, quarantined bad videos, layer files identical to the per-video
assets' (same data versions), one captioner per worker."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from curation.captioning.dataset import instructions_report_path
from curation.scaleout import OK, QUARANTINED, SKIPPED, VideoTask, run_shard
from longvila import layout
from longvila.keys import partition_key_for

SMALL = dict(fps=25, size=(160, 96))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from curation.synth import SOURCES, make_synthetic_video

    src = tmp_path_factory.mktemp("shard-src")
    for i in range(3):
        make_synthetic_video(str(src / f"v{i}.mp4"), [(1.2, SOURCES[i]), (1.2, SOURCES[(i + 2) % len(SOURCES)])],
                             **SMALL)
    (src / "broken.mp4").write_bytes(b"not a video at all")
    return src


@pytest.fixture
def caption_env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("LONGVILA_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "smoke-models"))


def _tasks(src: Path, names) -> list[VideoTask]:
    return [VideoTask(key=K(n), url=str(src / n), relpath=n) for n in names]


def K(name: str) -> str:
    return partition_key_for(name)


def test_shard_in_process_skips_unchanged_and_quarantines_bad_videos(corpus, tmp_path, caption_env):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(corpus, src)
    lake = str(tmp_path / "lake")
    tasks = _tasks(src, ["v0.mp4", "v1.mp4", "broken.mp4"])
    m1 = run_shard("s000001", tasks, lake, engine="local", batch_size=2)
    assert m1["counts"] == {OK: 2, SKIPPED: 0, QUARANTINED: 1}
    bad = m1["videos"][K("broken.mp4")]
    assert bad["status"] == QUARANTINED and "broken.mp4" in bad["error"]
    row = m1["videos"][K("v0.mp4")]
    assert row["raw_sha256"] == hashlib.sha256((src / "v0.mp4").read_bytes()).hexdigest()
    layers = {"video_probe": "probe", "video_shots": "shots", "video_clips": "clips", "clip_frames": "clip_frames",
              "video_frames": "video_frames", "clip_captions": "captions", "video_summary": "summaries",
              "video_instructions": "instructions"}
    assert set(row["outputs"]) == set(layers)
    for asset, layer in layers.items():
        data = Path(layout.layer_path(lake, layer, K("v0.mp4"))).read_bytes()
        assert row["outputs"][asset] == hashlib.sha256(data).hexdigest()
    report = json.loads(Path(instructions_report_path(lake, K("v0.mp4"))).read_text())
    assert report["num_records"] >= 1 and "question_types" in report
    # nothing changed: every good video is skipped (its row kept), the bad one is tried again
    m2 = run_shard("s000001", tasks, lake, engine="local", batch_size=2)
    assert m2["counts"] == {OK: 0, SKIPPED: 2, QUARANTINED: 1}
    assert m2["videos"][K("v0.mp4")]["outputs"] == row["outputs"]
    # one video changes: only its own work re-runs
    shutil.copy(corpus / "v2.mp4", src / "v1.mp4")
    m3 = run_shard("s000001", tasks, lake, engine="local", batch_size=2)
    assert {k: v["status"] for k, v in m3["videos"].items()} == {K("v0.mp4"): SKIPPED, K("v1.mp4"): OK,
                                                                 K("broken.mp4"): QUARANTINED}
    assert m3["videos"][K("v1.mp4")]["raw_sha256"] != m1["videos"][K("v1.mp4")]["raw_sha256"]


def test_a_model_service_outage_fails_the_shard_run_not_its_videos(corpus, tmp_path, caption_env, monkeypatch):
    """The summary LLM behind an endpoint that refuses connections: run_shard raises ServiceFailure (retryable;
    the asset's retry policy runs the shard again) instead of quarantining good videos, and writes no manifest."""
    from curation.captioning.annotate import ServiceFailure
    from curation.scaleout import shard_manifest_url
    from longvila.ports import free_port

    monkeypatch.setenv("LONGVILA_LLM_BACKEND", "openai")
    monkeypatch.setenv("LONGVILA_LLM_ENDPOINT", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("LONGVILA_CAPTION_MAX_RETRIES", "0")
    monkeypatch.setenv("LONGVILA_CAPTION_TIMEOUT_S", "2")
    lake = str(tmp_path / "lake")
    with pytest.raises(ServiceFailure) as err:
        run_shard("s000001", _tasks(corpus, ["v0.mp4"]), lake, engine="local")
    assert err.value.retryable and "v0.mp4" in str(err.value)
    assert not Path(shard_manifest_url(lake, "s000001")).exists()


@pytest.mark.slow
def test_shard_on_a_two_node_ray_cluster_matches_the_per_video_assets(corpus, tmp_path, caption_env, ray_cluster):
    """Two Ray actors (one per raylet, each loading the captioner once) curate 3 videos + 1 bad file; the
    layer files are the ones the per-video Dagster assets write for the same video (same data versions)."""
    from dagster import DagsterInstance, in_process_executor

    from assets import captions as captions_assets
    from assets import curation as curation_assets
    from assets.resources import LakeResource
    from orchestration.definitions import build_defs, per_video_chain
    from orchestration.demo import run_batch
    from orchestration.sensors import register_videos

    lake = str(tmp_path / "lake")
    tasks = _tasks(corpus, ["v0.mp4", "v1.mp4", "v2.mp4", "broken.mp4"])
    m = run_shard("s000001", tasks, lake, engine="ray", workers=2, batch_size=2)
    assert m["engine"] == "ray" and m["counts"] == {OK: 3, SKIPPED: 0, QUARANTINED: 1}
    # the per-video asset path for v0, on the same source and lake (instruction records name the lake's frames)
    res = LakeResource(source=str(corpus), storage=lake)
    defs = build_defs(modules=[curation_assets, captions_assets], lake=res, executor=in_process_executor)
    v0 = m["videos"][K("v0.mp4")]
    chain = [k for k in per_video_chain(defs)
             if k.to_user_string() in v0["outputs"] or k.to_user_string() == "raw_video"]
    with DagsterInstance.ephemeral() as inst:
        scan = register_videos(inst, res)
        key = K("v0.mp4")
        assert key in scan.new
        outcome = run_batch(defs, inst, chain, key, key)
        assert outcome.success, outcome.failures
        for asset, version in v0["outputs"].items():
            rec = inst.get_latest_materialization_event(__import__("dagster").AssetKey(asset))
            assert rec.asset_materialization.tags["dagster/data_version"] == version, asset
