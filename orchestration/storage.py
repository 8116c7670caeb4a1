"""`SqlitePooledStorage`: Dagster's SQLite instance storage with connections kept open (the project's default).

Dagster's own SQLite storage opens a new engine and connection for every read or write and closes it
afterwards. Closing the last connection to a WAL database checkpoints the WAL into the database file
and syncs it, and every commit syncs the WAL again: on a 2-core machine about 40 ms per event, while a
20-s video's run writes about 110 events (step starts, outputs, materialisations, check results) and
reads the event log in every step. Profiled (bench/results/orchestration.md), that was half the
run's time, and concurrent runs queued behind each other's checkpoints.

This storage is the same classes, database files and layout (``history/runs.db``,
``history/runs/<run_id>.db`` + ``index.db``, ``schedules/schedules.db`` under ``base_dir``; an
existing instance opens unchanged, and removing the block returns to Dagster's default) with:

* one engine per database per process, whose pool keeps its connections open (at most
  `ENGINES_PER_PROCESS` run shards at a time per process, least recently used disposed first);
* ``PRAGMA synchronous`` (config ``synchronous``, default ``NORMAL``): SQLite's recommended setting for
  WAL databases. The database cannot be corrupted; a power loss (not a crash of a process) may lose the
  last committed events. ``FULL`` is Dagster's default durability, at about twice the write cost;
* run-log watching (the UI's live run view) that also reacts to writes to the WAL file, since a
  database whose connections stay open is written to its ``-wal`` file between checkpoints;
* fork safety: a forked child forgets its parent's pooled connections (never uses or closes them).

Configured in the project's dagster.yaml (`orchestration.instance`)::

    storage:
      custom:
        module: orchestration.storage
        class: SqlitePooledStorage
        config: {base_dir: {env: DAGSTER_HOME}, synchronous: NORMAL}
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator, Optional

import sqlalchemy as db
from dagster import Enum, EnumValue, Field, StringSource
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string
from dagster._core.storage.sqlite_storage import _event_logs_directory, _runs_directory, _schedule_directory
from dagster._serdes import ConfigurableClass, ConfigurableClassData
from sqlalchemy.pool import QueuePool

ENGINES_PER_PROCESS = 8
SYNCHRONOUS = ("NORMAL", "FULL")
_LIVE_ENGINES: "weakref.WeakSet[_Engines]" = weakref.WeakSet()


class _Engines:
    """Pooled engines by connection string, at most `limit` of them besides the pinned ones (LRU)."""

    def __init__(self, synchronous: str, limit: int = ENGINES_PER_PROCESS, pinned: tuple[str, ...] = ()):
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
        self.synchronous, self.limit, self.pinned = synchronous, limit, set(pinned)
        self._engines: OrderedDict[str, db.engine.Engine] = OrderedDict()
        self._lock = threading.Lock()
        _LIVE_ENGINES.add(self)

    def get(self, conn_string: str):
        with self._lock:
            engine = self._engines.pop(conn_string, None) or self._create(conn_string)
            self._engines[conn_string] = engine
            unpinned = [k for k in self._engines if k not in self.pinned]
            for old in unpinned[:max(0, len(unpinned) - self.limit)]:
                self._engines.pop(old).dispose()
            return engine

    def _create(self, conn_string: str):
        # overflow without bound, as with a new connection per use: nested uses in one thread never wait
        engine = create_engine(conn_string, poolclass=QueuePool, pool_size=2, max_overflow=-1,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})
        db.event.listen(engine, "connect", lambda conn, _record: conn.execute(f"PRAGMA synchronous={self.synchronous}"))
        return engine

    def forget(self) -> None:
        """In a forked child: drop the parent's engines without touching their connections."""
        for engine in self._engines.values():
            engine.dispose(close=False)
        self._engines.clear()
        self._lock = threading.Lock()

    def dispose(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


def _forget_all_in_child() -> None:
    for engines in list(_LIVE_ENGINES):
        engines.forget()


os.register_at_fork(after_in_child=_forget_all_in_child)


@contextmanager
def _transaction(engine) -> Iterator:
    with engine.connect() as conn, conn.begin():
        yield conn


class _PooledConnect:
    """`connect()` of Dagster's SQLite run and schedule storages, on a pooled engine."""

    def __init__(self, conn_string: str, engines: _Engines, inst_data=None):
        self._engines = engines
        super().__init__(conn_string, inst_data)

    @contextmanager
    def connect(self) -> Iterator:
        with _transaction(self._engines.get(self._conn_string)) as conn:
            yield conn


class SqlitePooledRunStorage(_PooledConnect, SqliteRunStorage):
    pass


class SqlitePooledScheduleStorage(_PooledConnect, SqliteScheduleStorage):
    pass


class _WalAwareWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's run-log watchdog, also fired by writes to the run database's WAL file."""

    def __init__(self, event_log_storage, run_id, callback, cursor, **kwargs):
        super().__init__(event_log_storage, run_id, callback, cursor, **kwargs)
        self._patterns = [self._log_path, self._log_path + "-wal"]

    def on_modified(self, event) -> None:
        self._process_log()


class SqlitePooledEventLogStorage(SqliteEventLogStorage):
    def __init__(self, base_dir: str, engines: _Engines, inst_data=None):
        self._engines = engines
        super().__init__(base_dir, inst_data)
        engines.pinned.add(self.conn_string_for_shard(INDEX_SHARD_NAME))

    @contextmanager
    def _connect(self, shard: str) -> Iterator:
        with self._db_lock:
            engine = self._engines.get(self.conn_string_for_shard(shard))
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with _transaction(engine) as conn:
                yield conn

    def watch(self, run_id: str, cursor: Optional[str], callback) -> None:
        from watchdog.observers import Observer

        if not self._obs:
            self._obs = Observer()
            self._obs.start()
        watchdog = _WalAwareWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (watchdog, self._obs.schedule(watchdog, self._base_dir, recursive=True))

    def dispose(self) -> None:
        super().dispose()
        self._engines.dispose()


class SqlitePooledStorage(DagsterStorage, ConfigurableClass):
    """Run, event-log and schedule storage on SQLite with pooled connections (module docstring)."""

    def __init__(self, base_dir: str, synchronous: str = "NORMAL", inst_data: Optional[ConfigurableClassData] = None):
        self.base_dir = base_dir
        self._inst_data = inst_data
        self._engines = _Engines(synchronous)
        runs_dir, schedules_dir = _runs_directory(base_dir), _schedule_directory(base_dir)
        for d in (runs_dir, schedules_dir):
            os.makedirs(d, exist_ok=True)
        # the run and schedule databases are created (and migrated) by Dagster's own from_local, then reopened pooled
        SqliteRunStorage.from_local(runs_dir)
        SqliteScheduleStorage.from_local(schedules_dir)
        self._run_storage = SqlitePooledRunStorage(create_db_conn_string(runs_dir, "runs"), self._engines)
        self._event_log_storage = SqlitePooledEventLogStorage(_event_logs_directory(base_dir), self._engines)
        self._schedule_storage = SqlitePooledScheduleStorage(create_db_conn_string(schedules_dir, "schedules"),
                                                             self._engines)
        self._engines.pinned |= {self._run_storage._conn_string, self._schedule_storage._conn_string}
        super().__init__()

    @property
    def inst_data(self) -> Optional[ConfigurableClassData]:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {"base_dir": StringSource,
                "synchronous": Field(Enum("SqlitePooledSynchronous", [EnumValue(v) for v in SYNCHRONOUS]),
                                     is_required=False, default_value="NORMAL",
                                     description="SQLite PRAGMA synchronous of every connection")}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: dict) -> "SqlitePooledStorage":
        return cls(inst_data=inst_data, **config_value)

    @property
    def event_log_storage(self):
        return self._event_log_storage

    @property
    def run_storage(self):
        return self._run_storage

    @property
    def schedule_storage(self):
        return self._schedule_storage
