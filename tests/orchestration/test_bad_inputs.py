"""Bad input at the partition level: each bad file fails only its own partition, names the file and
the reason, and leaves nothing behind; every valid video (hostile names included) completes."""

from __future__ import annotations

import re

import pytest
from dagster import DagsterInstance

from orchestration.sensors import register_videos


def _run_all(bad_inputs_dir, tmp_path, helpers):
    src, expected = bad_inputs_dir
    storage = tmp_path / "lake"
    defs, lake = helpers.curation_defs(str(src), str(storage))
    inst = DagsterInstance.ephemeral()
    scan = register_videos(inst, lake)
    by_rel = {v["relpath"]: k for k, v in scan.manifest["videos"].items()}
    outcomes = {rel: helpers.run_partition(defs, inst, key) for rel, key in by_rel.items()}
    return src, expected, storage, lake, scan, by_rel, outcomes, inst


@pytest.mark.slow
def test_bad_inputs_fail_only_their_partition(bad_inputs_dir, tmp_path, helpers):
    src, expected, storage, lake, scan, by_rel, outcomes, inst = _run_all(bad_inputs_dir, tmp_path, helpers)

    assert "escape.mp4" in scan.rejected and "escape.mp4" not in by_rel
    video_files = {n: v for n, v in expected.items() if not n.endswith(".m4a")}  # .m4a is not a video extension
    assert set(video_files) <= set(by_rel)

    for name, verdict in video_files.items():
        o = outcomes[name]
        key = by_rel[name]
        if verdict == "ok":
            assert o.success, (name, o.failures)
            for layer in ("probe", "shots", "clips", "clip_frames", "video_frames"):
                assert (storage / layer / f"{key}.{'json' if layer == 'probe' else 'parquet'}").is_file()
        else:
            assert not o.success, name
            # the failure is the asset's Failure, naming the source file and the reason
            f = o.failures[0]
            assert f["step"] == "video_probe", (name, o.failures)
            assert name in f["description"], f["description"]
            assert f["metadata"]["file"] == name
            assert f["metadata"]["reason"] and f["metadata"]["reason"] in f["description"]
            assert len(o.failures) == 1  # downstream steps were skipped, not failed
            # nothing written for the failed partition
            assert not any(key in p for p in helpers.lake_files(storage)), name
    # the symlink inside the root is a valid video too
    assert outcomes["sub/inside_link.mp4"].success

    # specific reasons from the library reach the user
    reasons = {n: outcomes[n].failures[0]["metadata"]["reason"] for n, v in video_files.items() if v == "error"}
    assert re.search(r"empty|0 bytes", reasons["zero_bytes.mp4"])
    assert re.search(r"no video stream", reasons["audio_only.mp4"])
    # no temporary files anywhere in the lake
    assert not [p for p in helpers.lake_files(storage) if "/." in "/" + p or ".tmp" in p]
    # every valid video got checked: all asset checks passed for it
    for name, verdict in video_files.items():
        if verdict == "ok":
            key = by_rel[name]
            evals = [ev for ev in inst.all_logs(outcomes[name].run_id)
                     if ev.dagster_event and ev.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]
            assert len(evals) == 5, name
            assert all(ev.dagster_event.event_specific_data.passed for ev in evals), name
