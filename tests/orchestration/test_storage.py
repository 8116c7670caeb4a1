"""`orchestration.storage.SqlitePooledStorage`, the project's instance storage: the same SQLite files as
Dagster's default (an instance switches both ways), visible across instances and forked workers (the warm
launcher's pattern), a bounded number of open databases, and live run-log watching (the UI's run view)
although writes stay in the WAL file while connections are open."""

from __future__ import annotations

import os
import threading
import time

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry

from orchestration.instance import instance_yaml
from orchestration.storage import (
    ENGINES_PER_PROCESS,
    SqlitePooledEventLogStorage,
    SqlitePooledRunStorage,
    SqlitePooledStorage,
)


def _instance(home, pooled=True) -> DagsterInstance:
    (home / "dagster.yaml").write_text(instance_yaml(2, home, pooled_sqlite=pooled))
    return DagsterInstance.from_config(str(home))


def _materialize(instance, run_id: str, partition: str) -> None:
    mat = AssetMaterialization(asset_key=AssetKey("thing"), partition=partition)
    event = DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, "job",
                         event_specific_data=StepMaterializationData(mat))
    instance.store_event(EventLogEntry(error_info=None, level="debug", user_message="", run_id=run_id,
                                       timestamp=time.time(), dagster_event=event))


def _partitions(instance) -> set[str]:
    recs = instance.fetch_materializations(AssetKey("thing"), limit=100).records
    return {r.asset_materialization.partition for r in recs}


@pytest.fixture()
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


def test_pooled_storage_is_configured_and_shares_dagsters_files(home):
    with _instance(home, pooled=False) as plain:
        _materialize(plain, "r-plain", "a")
    with _instance(home) as pooled:
        assert isinstance(pooled.event_log_storage, SqlitePooledEventLogStorage)
        assert isinstance(pooled.run_storage, SqlitePooledRunStorage)
        assert _partitions(pooled) == {"a"}  # Dagster's default files open unchanged
        _materialize(pooled, "r-pooled", "b")
    with _instance(home, pooled=False) as plain:
        assert _partitions(plain) == {"a", "b"}  # and back


def test_writes_are_visible_to_other_instances_and_forked_workers(home):
    with _instance(home) as parent, _instance(home) as other:
        _materialize(parent, "r1", "a")  # the parent holds pooled connections when it forks
        assert _partitions(other) == {"a"}
        pid = os.fork()
        if pid == 0:  # a run worker: its own instance, the parent's connections forgotten, never used
            code = 1
            try:
                with DagsterInstance.from_ref(parent.get_ref()) as child:
                    _materialize(child, "r2", "b")
                code = 0
            finally:
                os._exit(code)  # as the warm launcher's workers end: no clean close
        assert os.waitpid(pid, 0)[1] == 0
        _materialize(parent, "r1", "c")  # the parent's connections still work after the fork
        assert _partitions(other) == {"a", "b", "c"}
        assert _partitions(parent) == {"a", "b", "c"}


def test_open_databases_are_bounded(home):
    with _instance(home) as inst:
        for i in range(3 * ENGINES_PER_PROCESS):
            _materialize(inst, f"run{i}", str(i))
        engines = inst.event_log_storage._engines
        assert len(engines._engines) <= ENGINES_PER_PROCESS + len(engines.pinned)
        assert len(_partitions(inst)) == 3 * ENGINES_PER_PROCESS
        assert len(inst.all_logs("run0")) == 1  # an evicted shard reopens


def test_run_log_watch_sees_events_written_to_the_wal(home):
    """The UI's live run view watches the run's database file; with connections kept open the writes land in
    its -wal file, which the watch must see too."""
    with _instance(home) as writer, _instance(home) as ui:
        _materialize(writer, "live", "first")
        got, seen = [], threading.Event()

        def callback(entry, _cursor):
            got.append(entry.dagster_event.event_specific_data.materialization.partition)
            if "second" in got:
                seen.set()

        ui.event_log_storage.watch("live", None, callback)
        time.sleep(0.5)  # the observer thread is scheduled
        _materialize(writer, "live", "second")
        assert seen.wait(20), got
        assert os.path.exists(writer.event_log_storage.path_for_shard("live") + "-wal")
        ui.event_log_storage.end_watch("live", callback)


def test_synchronous_is_validated(home):
    with pytest.raises(ValueError, match="synchronous"):
        SqlitePooledStorage(str(home), synchronous="OFF")
