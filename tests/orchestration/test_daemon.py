"""Orchestration through a real ``dagster-daemon`` on a project instance (`orchestration.harness`): the new-video
sensor ticks, the automation sensor evaluates the shared condition, the run queue applies priorities and
limits, runs execute in workers forked by the warm-process launcher. Nothing here calls a sensor or a
condition directly.

One daemon serves the module (curation + captions with the smoke models, `daemon_location.py`); each test
uses its own videos, so the tests hold in any order.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from dagster import AssetKey

from longvila.keys import partition_key_for

pytestmark = [pytest.mark.slow]

HERE = Path(__file__).resolve().parent
CHAIN = {"raw_video", "video_probe", "video_shots", "video_clips", "clip_frames", "video_frames", "clip_captions",
         "video_summary", "video_instructions"}
CAPTION_LAYER = {"clip_captions", "video_summary", "video_instructions"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    from orchestration.harness import ProjectDaemon

    work = tmp_path_factory.mktemp("daemon")
    ws = work / "workspace.yaml"
    ws.write_text(f"load_from:\n  - python_file:\n      relative_path: {HERE / 'daemon_location.py'}\n"
                  f"      working_directory: {HERE.parents[1]}\n")
    env = {"LONGVILA_SENSOR_INTERVAL_S": "2", "LONGVILA_AUTOMATION_INTERVAL_S": "3", "OMP_NUM_THREADS": "1",
           "LONGVILA_MODELS_DIR": str(tmp_path_factory.mktemp("models"))}
    d = ProjectDaemon(work, workspace=ws, env=env, cpus=2)
    try:
        d.wait_for_ticks("new_video_sensor", 1, after=0.0, timeout=300)
        yield d
    finally:
        d.stop()


@pytest.fixture()
def video(small_video_cache, tmp_path):
    """A distinct small video under a fresh name each time (its own partition)."""

    def make(variant: int = 0) -> Path:
        p = tmp_path / f"v{uuid.uuid4().hex[:8]}.mp4"
        shutil.copyfile(small_video_cache[variant % len(small_video_cache)], p)
        return p

    return make


def _asset_graph():
    """The asset graph of the code location the daemon loaded (`daemon_location.py`)."""
    from assets import captions, curation
    from orchestration.definitions import build_defs

    return build_defs(modules=[curation, captions]).resolve_asset_graph()


def _selection(run) -> set[str]:
    return {k.to_user_string() for k in run.asset_selection or []}


def _landed(daemon, path: Path) -> str:
    daemon.land(path)
    return partition_key_for(path.name)


def _quiet(daemon, key: str, before: int) -> list:
    """Two automation ticks after every run of `key` finished: the runs of `key` then (none new expected)."""
    daemon.wait_for_ticks("automation_sensor", 2, timeout=300)
    runs = daemon.runs(key)
    assert len(runs) == before, [(r.run_id, _selection(r), r.tags.get("dagster/sensor_name")) for r in runs]
    return runs


def test_new_video_runs_its_whole_chain_once(daemon, video):
    key = _landed(daemon, video())
    (run,) = daemon.wait_for_runs({key})
    assert run.status.value == "SUCCESS", daemon.log_path
    assert run.tags["dagster/sensor_name"] == "new_video_sensor" and _selection(run) == CHAIN
    assert run.tags["longvila/automated"] == "true" and run.tags["dagster/priority"] == "-1"
    assert int(run.tags["longvila/worker_pid"]) != daemon.proc.pid  # a worker forked by the warm process
    assert (daemon.storage / "instructions" / f"{key}.jsonl").is_file()
    # the automation sensor sees the chain built from the current inputs: it requests nothing more
    _quiet(daemon, key, before=1)


def test_touched_video_is_rehashed_but_nothing_is_recaptioned(daemon, video):
    path = video(1)
    key = _landed(daemon, path)
    daemon.wait_for_runs({key})
    st = os.stat(daemon.source / path.name)
    os.utime(daemon.source / path.name, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))
    runs = daemon.wait_for_runs({key}, count=2)
    touched = next(r for r in runs if _selection(r) == {"raw_video"})
    assert touched.status.value == "SUCCESS"
    _quiet(daemon, key, before=2)
    versions = [e.asset_materialization.tags["dagster/data_version"] for e in daemon.instance.fetch_materializations(
        AssetKey("raw_video"), limit=100).records if e.asset_materialization.partition == key]
    assert len(versions) == 2 and len(set(versions)) == 1


def test_backfill_with_identical_outputs_triggers_no_downstream_run(daemon, video):
    """What the UI's "Materialize" of several partitions does: an asset backfill, run by the backfill daemon."""
    from dagster._core.execution.backfill import PartitionBackfill

    keys = [_landed(daemon, video(i)) for i in (0, 2)]
    daemon.wait_for_runs(set(keys))
    graph = _asset_graph()
    curation = [k for k in graph.materializable_asset_keys if k.to_user_string() in CHAIN - CAPTION_LAYER]
    backfill_id = f"identical{uuid.uuid4().hex[:6]}"
    daemon.instance.add_backfill(PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=graph, partition_names=keys,
        asset_selection=curation, backfill_timestamp=time.time(), tags={}, dynamic_partitions_store=daemon.instance,
        all_partitions=False, title=None, description=None, run_config=None))
    runs = daemon.wait_for_runs(set(keys), count=2 * len(keys), timeout=600)
    backfill_runs = [r for r in runs if r.tags.get("dagster/backfill") == backfill_id]
    assert backfill_runs and all(r.status.value == "SUCCESS" for r in backfill_runs)
    assert all("longvila/automated" not in r.tags for r in backfill_runs)  # a manual launch: full priority
    for k in keys:
        _quiet(daemon, k, before=len(daemon.runs(k)))
    assert not [r for r in daemon.runs() if r.tags.get("dagster/partition") in keys and _selection(r) & CAPTION_LAYER
                and r.tags.get("dagster/sensor_name") == "automation_sensor"]


def test_changed_video_recaptions_only_itself(daemon, video, small_video_cache):
    path = video(0)
    a, b = _landed(daemon, path), _landed(daemon, video(1))
    daemon.wait_for_runs({a, b})
    runs_b = len(daemon.runs(b))
    shutil.copyfile(small_video_cache[2], daemon.source / path.name)  # new bytes under the same name
    # raw_video (sensor) then the rest of the chain (automation: raw_video has a new data version)
    runs = daemon.wait_for_runs({a}, count=3, timeout=600)
    auto = [r for r in runs if r.tags.get("dagster/sensor_name") == "automation_sensor"]
    assert auto and all(r.status.value == "SUCCESS" for r in runs)
    assert set().union(*map(_selection, auto)) >= CAPTION_LAYER
    assert len(daemon.runs(b)) == runs_b


def test_removed_video_fails_only_itself_and_is_listed(daemon, video):
    """A backfill over two videos, one of them removed from the source meanwhile: the other's run is neither
    failed nor cancelled, and `video_source` lists the removed one with when and why."""
    from dagster._core.execution.backfill import PartitionBackfill

    gone_path = video(2)
    gone, kept = _landed(daemon, gone_path), _landed(daemon, video(0))
    daemon.wait_for_runs({gone, kept})
    graph = _asset_graph()
    daemon.instance.add_backfill(PartitionBackfill.from_asset_partitions(
        backfill_id=f"removal{uuid.uuid4().hex[:6]}", asset_graph=graph, partition_names=[gone, kept],
        asset_selection=[AssetKey("raw_video"), AssetKey("video_probe")], backfill_timestamp=time.time(), tags={},
        dynamic_partitions_store=daemon.instance, all_partitions=False, title=None, description=None,
        run_config=None))
    (daemon.source / gone_path.name).unlink()
    daemon.wait_for_ticks("new_video_sensor", 2)
    runs = daemon.wait_for_runs({gone, kept}, count=4, timeout=600)
    assert all(r.status.value == "SUCCESS" for r in runs if r.tags.get("dagster/partition") == kept)
    manifest_entry = daemon.instance.get_latest_materialization_event(AssetKey("video_source"))
    listing = manifest_entry.asset_materialization.metadata["removed_videos"].value
    assert gone in listing and gone_path.name in listing and "no longer listed" in listing
    assert gone in daemon.instance.get_dynamic_partitions("videos")  # history stays


def test_manual_launch_is_not_starved_by_automation(daemon, video):
    """Automated runs may use 2 of the 3 run slots and yield to manual launches (priority): a manual run
    launched while automated runs wait in the queue overtakes them (it starts before automated runs that
    were queued before it; its own start may lag an automated run that took a slot freed meanwhile)."""
    from concurrent.futures import ThreadPoolExecutor

    first = _landed(daemon, video(0))
    daemon.wait_for_runs({first})
    # the CLI's start-up (imports, workspace load: seconds) overlaps the queue filling with 10 automated runs,
    # which curate faster than it starts: launched only once the queue is full, it would find it drained
    with ThreadPoolExecutor(1) as pool:
        launch = pool.submit(daemon.cli, "job", "launch", "-j", "curation_lineage",
                             "--tags", '{"dagster/partition": "%s"}' % first)
        keys = [_landed(daemon, video(i)) for i in range(10)]
        launch.result()
    runs = daemon.wait_for_runs(set(keys) | {first}, count=12, timeout=900)
    records = {r.run_id: daemon.instance.get_run_record_by_id(r.run_id) for r in runs}
    manual = next(records[r.run_id] for r in runs if "longvila/automated" not in r.tags)
    auto = [records[r.run_id] for r in runs if r.tags.get("longvila/automated") == "true"]
    launched = manual.create_timestamp.timestamp()
    waiting = [a for a in auto if a.create_timestamp.timestamp() < launched < a.start_time]
    assert waiting, "the automated queue drained before the manual launch; nothing was tested"
    overtaken = [a for a in waiting if a.start_time > manual.start_time]
    assert overtaken, "every automated run queued before the manual launch started before it"
    # never more than 2 automated runs at once
    spans = [(a.start_time, a.end_time) for a in auto]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2
