"""The project's Dagster instance: where DAGSTER_HOME is, and the ``dagster.yaml`` the project writes there.

`ensure_dagster_home()` points DAGSTER_HOME at ``$DAGSTER_HOME`` or ``<root>/.dagster``, creates it and
writes `instance_yaml()` as ``dagster.yaml`` unless a file is already there (a user's own file is kept;
one written by an older version of this project, recognised by its first line, is replaced).

What the file configures (SQLite storage in DAGSTER_HOME):

* run queue (``QueuedRunCoordinator``, checked every second): at most ``cpus + 1`` runs at once; runs
  started by the project's automation (new-video sensor, automation sensor, training schedule: tag
  ``longvila/automated=true``) are limited to ``cpus`` of those slots, so a manual launch from the UI
  always finds one, and they carry ``dagster/priority=-1`` so that queued manual runs (priority 0)
  are dequeued first;
* run launcher: `orchestration.launcher.WarmRunLauncher`, which starts each run in a process forked
  from a warm one that has already imported Dagster and the project (no interpreter start-up or
  imports per run);
* concurrency pools: every pool has one slot unless set otherwise (``dagster instance concurrency set
  NAME N``); the only pool is ``training`` (`assets.training`), so one stage uses the GPUs at a time;
* run monitoring: on, so that a run worker that died is noticed and ``dagster/max_runtime`` (set on
  training runs, `orchestration.definitions`) is enforced;
* storage: `orchestration.storage.SqlitePooledStorage`, Dagster's SQLite storage (same files) with
  connections kept open and ``synchronous=NORMAL``: a run's event writes cost a few ms instead of ~40.
  It comes last: appending deploy/dagster-postgres.yaml replaces it (the last ``storage`` key is read).
"""

from __future__ import annotations

import os
from pathlib import Path

from longvila.settings import default_dagster_home

AUTOMATED_TAG = "longvila/automated"
AUTOMATED_RUN_TAGS = {AUTOMATED_TAG: "true", "dagster/priority": "-1"}
HEADER = "# Dagster instance of the LongVILA stack, written by orchestration/instance.py (v3)."
_OLD_HEADERS = ("# Dagster instance of the LongVILA stack. Empty = Dagster's defaults",)


def instance_yaml(cpus: int | None = None, home: str | os.PathLike | None = None, pooled_sqlite: bool = True) -> str:
    """The project's dagster.yaml for a machine with `cpus` cores (default: this machine), its SQLite files in
    `home` (default: wherever DAGSTER_HOME points when the instance is loaded); `pooled_sqlite=False` leaves
    the storage to Dagster's default (bench/orchestration.py compares the two)."""
    cpus = max(1, cpus or os.cpu_count() or 1)
    base_dir = f'"{Path(home).resolve()}"' if home else "{env: DAGSTER_HOME}"
    return f"""{HEADER}
# Edit freely: this file is never overwritten. Storage: SQLite in this folder (last block);
# production: append deploy/dagster-postgres.yaml (PostgreSQL storage; README "Scaling out").
# https://docs.dagster.io/deployment/oss/dagster-yaml
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
run_launcher:
  module: orchestration.launcher
  class: WarmRunLauncher
concurrency:
  runs:
    max_concurrent_runs: {cpus + 1}
    tag_concurrency_limits:
      # sensor, automation and schedule runs leave one slot free for manual launches
      - key: "{AUTOMATED_TAG}"
        value: "true"
        limit: {cpus}
  pools:
    # one slot per pool unless set otherwise; the `training` pool holds the GPUs: one stage at a time
    default_limit: 1
    granularity: op
run_monitoring:
  enabled: true
  start_timeout_seconds: 300
  poll_interval_seconds: 15
""" + (_POOLED_SQLITE.format(base_dir=base_dir) if pooled_sqlite else "")


_POOLED_SQLITE = """# Dagster's SQLite files, connections kept open (orchestration/storage.py);
# synchronous: FULL for Dagster's durability against power loss, at about twice the write cost
storage:
  custom:
    module: orchestration.storage
    class: SqlitePooledStorage
    config:
      base_dir: {base_dir}
      synchronous: NORMAL
"""


def ensure_dagster_home() -> str:
    """Point DAGSTER_HOME at the project-local folder unless the user set it, create it, write dagster.yaml."""
    home = default_dagster_home()
    os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    cfg = Path(home) / "dagster.yaml"
    first = cfg.read_text().split("\n", 1)[0] if cfg.exists() else None
    if first is None or first.startswith(_OLD_HEADERS):
        cfg.write_text(instance_yaml())
    return home
