"""Data versions, code versions and staleness across partitions, plus eager automation."""

from __future__ import annotations

import hashlib
import shutil
import types

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, evaluate_automation_conditions

from assets.curation import RAW_VIDEO, build_curation_defs
from longvila.keys import partition_key_for
from curation.config import CurationConfig
from orchestration.staleness import StaleStatus, stale_report

DOWNSTREAM = {"video_probe", "video_shots", "video_clips", "clip_frames", "video_frames"}


def _latest(inst, key: str, partition: str):
    recs = inst.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[partition]), limit=1
    ).records
    return recs[0].asset_materialization if recs else None


def _requested(result) -> dict:
    out = {}
    for r in result.results:
        key = r.key
        parts = result.get_requested_partitions(key) if r.true_subset.size else set()
        if parts:
            out[key.to_user_string()] = set(parts)
    return out


def test_changed_video_and_code_version_staleness(tmp_path, small_video_cache, helpers):
    src = tmp_path / "raw"
    src.mkdir()
    shutil.copyfile(small_video_cache[0], src / "a.mp4")
    shutil.copyfile(small_video_cache[1], src / "b.mp4")
    ka, kb = partition_key_for("a.mp4"), partition_key_for("b.mp4")
    defs, lake = helpers.curation_defs(str(src), str(tmp_path / "lake"))
    inst = DagsterInstance.ephemeral()

    # the automation sensor is already running (its first tick only records the initial state)
    auto0 = evaluate_automation_conditions(defs=defs, instance=inst)
    assert auto0.total_requested == 0
    # sensor registers both videos and asks for raw_video; run those requests like the daemon would
    r1 = helpers.tick(inst, lake)
    for rr in r1.run_requests:
        assert helpers.run_partition(defs, inst, rr.partition_key, [RAW_VIDEO]).success
    raw_a = _latest(inst, "raw_video", ka)
    assert raw_a.tags["dagster/data_version"] == hashlib.sha256((src / "a.mp4").read_bytes()).hexdigest()

    # eager automation carries the new partitions through the whole lineage in one tick (Dagster
    # counts an upstream requested in the same tick as "will be materialised")
    auto1 = evaluate_automation_conditions(defs=defs, instance=inst, cursor=auto0.cursor)
    assert _requested(auto1) == {k: {ka, kb} for k in DOWNSTREAM}

    keys = [k for k in helpers.curation_keys(defs) if k != RAW_VIDEO]
    for k in (ka, kb):
        assert helpers.run_partition(defs, inst, k, keys).success
    rep = stale_report(defs, inst, [ka, kb])
    assert set(rep.status.values()) == {StaleStatus.FRESH}
    # the automation sensor ticks again: the requested work is done, nothing new
    auto1b = evaluate_automation_conditions(defs=defs, instance=inst, cursor=auto1.cursor)
    assert auto1b.total_requested == 0

    # provenance: code version and the upstream data version are recorded
    probe_a = _latest(inst, "video_probe", ka)
    assert probe_a.tags["dagster/code_version"] == "probe-v1"
    assert any(t.startswith("dagster/input_data_version/") for t in probe_a.tags)

    # re-running a layer that produces identical bytes changes nothing downstream
    shots_v = _latest(inst, "video_shots", kb).tags["dagster/data_version"]
    assert helpers.run_partition(defs, inst, kb, [AssetKey("video_shots")]).success
    assert _latest(inst, "video_shots", kb).tags["dagster/data_version"] == shots_v
    assert stale_report(defs, inst, [kb]).transitive == set()

    # change the bytes of a.mp4: the sensor asks for exactly that partition
    shutil.copyfile(small_video_cache[2], src / "a.mp4")
    r2 = helpers.tick(inst, lake, r1.cursor)
    assert [rr.partition_key for rr in r2.run_requests] == [ka]
    assert helpers.run_partition(defs, inst, ka, [RAW_VIDEO]).success
    rep = stale_report(defs, inst, [ka, kb])
    # direct (Dagster's resolver): every layer that reads the video; clips only through shots
    assert rep.stale_assets(ka, transitive=False) == {"video_probe", "video_shots", "clip_frames", "video_frames"}
    assert rep.stale_assets(ka) == DOWNSTREAM
    assert rep.stale_assets(kb) == set() and rep.stale_assets(kb, transitive=False) == set()
    assert rep.causes[(AssetKey("video_probe"), ka)] == ["has a new dependency data version (raw_video)"]

    # automation re-runs the whole lineage of partition a only; the identical re-run of b's shots
    # above (same data version) triggers nothing
    auto2 = evaluate_automation_conditions(defs=defs, instance=inst, cursor=auto1b.cursor)
    assert _requested(auto2) == {k: {ka} for k in DOWNSTREAM}

    # bring a up to date again, then change the shot detector's parameters (a new code version)
    assert helpers.run_partition(defs, inst, ka, keys).success
    assert stale_report(defs, inst, [ka, kb]).transitive == set()
    cfg2 = CurationConfig(detector_options={"cut_ratio": 3.0})
    mod2 = types.SimpleNamespace(defs=build_curation_defs(cfg2))
    from dagster import in_process_executor

    from orchestration.definitions import build_defs

    defs2 = build_defs(modules=[mod2], lake=lake, executor=in_process_executor)
    rep2 = stale_report(defs2, inst, [ka, kb])
    for k in (ka, kb):
        assert rep2.stale_assets(k, transitive=False) == {"video_shots"}
        assert rep2.stale_assets(k) == {"video_shots", "video_clips", "clip_frames"}
        assert rep2.causes[(AssetKey("video_shots"), k)] == ["has a new code version"]
