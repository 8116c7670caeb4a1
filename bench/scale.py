"""Orchestration at corpus scale: partition add, sensor tick (daemon path), automation evaluation, backfill
launch and the lineage audit at 1k / 10k / 100k videos, on SQLite and PostgreSQL instances.

    .venv/bin/python bench/scale.py                           # 1k and 10k, SQLite and PostgreSQL
    .venv/bin/python bench/scale.py --sizes 1000,10000,100000 --shard-sizes 100000,1000000   # the lead's run
    .venv/bin/python bench/scale.py --sizes 50 --db sqlite --limit-s 60   # CI smoke size

Fabricated instances, real storage calls: every measurement runs Dagster's own code against a fresh instance
whose history was written with Dagster's storage API (``add_dynamic_partitions``,
``event_log_storage.store_event_batch`` of materialisation events carrying the same provenance tags a real
run records: data version, code version, input data versions and input event pointers, following the
project's real asset graph). Nothing is mocked:

* partition add: `orchestration.bulk.add_partitions` of N keys;
* sensor tick: the project's ``new_video_sensor`` through the sensor daemon's own iteration
  (``dagster._daemon.sensor.execute_sensor_iteration``, in-process code location, queued run coordinator so
  no run executes) over a source folder of N empty ``.mp4`` files: the first tick and the second tick (each
  takes the next ``LONGVILA_SENSOR_MAX_NEW`` new videos, one queued run each; the daemon's minimum interval
  is skipped for the second);
* automation: ``evaluate_automation_conditions`` of the project's Definitions (what the automation daemon
  evaluates each interval), first evaluation and a steady one;
* backfill launch: a backfill of the curation job over all N partitions submitted (``add_backfill``), then
  one backfill-daemon iteration (``execute_backfill_iteration``), which creates the queued runs;
* lineage: ``longvila lineage stage5_long_sft`` (`orchestration.lineage.lineage`) and ``--video KEY``.

Each measurement stops at ``--limit-s`` (reported as "> limit"). Targets (issue 14): automation within its
30 s interval, sensor tick within its 60 s timeout, checkpoint audit < 10 s at 100k, ``--video`` < 1 s.
Writes bench/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
QUEUED = """
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
"""
TARGETS = {"sensor first tick": 60.0, "sensor 2nd tick": 60.0, "automation first": 30.0,
           "automation steady": 30.0, "lineage audit": 10.0, "lineage --video": 1.0}


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def _raise(*_):
        raise Timeout()

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def measure(fn: Callable[[], object], limit_s: float) -> tuple[float | None, object]:
    """(seconds, result) of fn(); (None, None) when it ran past `limit_s`."""
    t0 = time.perf_counter()
    try:
        with time_limit(limit_s):
            out = fn()
    except Timeout:
        return None, None
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------------------------------ instances


@contextlib.contextmanager
def bench_home(db: str, pg) -> Iterator[Path]:
    """A DAGSTER_HOME for one measurement: SQLite, or a fresh database on the bench's PostgreSQL server."""
    # instance files on tmpfs where there is one: the bench measures Dagster's queries, not this VM's fsync
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    home = Path(tempfile.mkdtemp(prefix=f"scale-{db}-", dir=shm))
    try:
        if db == "postgres":
            import psycopg2

            name = f"bench_{int(time.time() * 1e6)}"
            conn = psycopg2.connect(pg.url)
            conn.autocommit = True
            conn.cursor().execute(f'CREATE DATABASE "{name}"')
            conn.close()
            os.environ.update({**pg.dagster_env(), "DAGSTER_PG_DB": name})
            (home / "dagster.yaml").write_text((ROOT / "deploy" / "dagster-postgres.yaml").read_text() + QUEUED)
        else:
            (home / "dagster.yaml").write_text(QUEUED)
        os.environ["DAGSTER_HOME"] = str(home)
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def video_keys(n: int) -> list[str]:
    return [f"v{i:07d}" for i in range(n)]


# ------------------------------------------------------------------------------------------ fabrication


def _entry(asset_key, partition, tags: dict, metadata: dict | None = None):
    from dagster import AssetMaterialization
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    mat = AssetMaterialization(asset_key, partition=partition, tags=tags, metadata=metadata or {})
    ev = DagsterEvent(event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value, job_name=RUNLESS_JOB_NAME,
                      event_specific_data=StepMaterializationData(mat))
    return EventLogEntry(error_info=None, level=logging.INFO, user_message="", run_id=RUNLESS_RUN_ID,
                         timestamp=time.time(), dagster_event=ev)


def _tags_for(graph, key, p, latest: dict, all_keys: list[str]) -> dict:
    """The provenance tags Dagster writes for a materialisation of `key` (partition `p`)."""
    import hashlib

    tags = {"dagster/code_version": graph.get(key).code_version or "v1"}
    for up in graph.get(key).parent_keys:
        name = up.to_user_string()
        if graph.get(up).partitions_def is not None and p is None:  # all partitions of a per-video input
            vs = [latest[(up, k)][1] for k in all_keys if (up, k) in latest]
            tags[f"dagster/input_data_version/{name}"] = hashlib.sha256("".join(vs).encode()).hexdigest()
            tags[f"dagster/input_event_pointer/{name}"] = str(latest.get((up, "__max__"), "NULL"))
        elif (up, p) in latest:
            sid, v = latest[(up, p)]
            tags[f"dagster/input_data_version/{name}"] = v
            tags[f"dagster/input_event_pointer/{name}"] = str(sid)
    tags["dagster/data_version"] = hashlib.sha256(f"{key.to_user_string()}/{p}".encode()).hexdigest()
    return tags


def _dataset_metadata(graph, key, keys: list[str], lake: Path, tables: bool) -> dict:
    """A dataset's metadata; with `tables`, a real lineage.parquet of every video (longvila.lineage_table)."""
    import hashlib

    from dagster import MetadataValue

    from longvila.lineage_table import LineageTable

    per_video = [up for up in graph.get(key).parent_keys if graph.get(up).partitions_def is not None]
    if not tables or not per_video:
        return {}
    cols = [up.to_user_string() for up in per_video]
    table = LineageTable(key.to_user_string(), {c: graph.get(up).code_version for c, up in zip(cols, per_video)})
    for k in keys:
        table.add(k, hashlib.sha256(f"raw_video/{k}".encode()).hexdigest(),
                  {c: hashlib.sha256(f"{c}/{k}".encode()).hexdigest() for c in cols})
    url, sha = table.write(str(lake / "datasets" / key.to_user_string()))
    return {"lineage_table": MetadataValue.path(url), "lineage_sha256": sha, "lineage_videos": len(keys)}


def fabricate_history(instance, defs, parts: list[str], keys: list[str], lake: Path, history: int, target: str,
                      tables: bool = True, batch: int = 2000) -> dict:
    """Materialise (as events) every asset upstream of `target`, in topological order, with the provenance
    tags Dagster writes: partitioned assets for the first `history` partitions (videos or shards), the others
    once (datasets with a lineage table of all `keys` when `tables`). Returns counts."""
    from dagster import AssetKey

    graph = defs.resolve_asset_graph()
    target = AssetKey(target)
    wanted = set(graph.get_ancestor_asset_keys(target)) | {target}
    order = [k for k in graph.toposorted_asset_keys if k in wanted and graph.get(k).is_materializable]
    latest: dict = {}  # (key, partition) -> (storage_id, data_version)
    events = 0
    for key in order:
        per_video = graph.get(key).partitions_def is not None
        done = parts[:history] if per_video else [None]
        md = {} if per_video else _dataset_metadata(graph, key, keys, lake, tables)
        entries = [_entry(key, p, _tags_for(graph, key, p, latest, parts), md) for p in done]
        for i in range(0, len(entries), batch):
            instance.event_log_storage.store_event_batch(entries[i:i + batch])
        events += len(entries)
        recs = _latest_ids(instance, key, len(done))
        latest.update({(key, p): v for p, v in recs.items()})
        if per_video and recs:
            latest[(key, "__max__")] = max(sid for sid, _ in recs.values())
    return {"events": events, "assets": len(order)}


def _latest_ids(instance, key, n: int) -> dict:
    from dagster import AssetRecordsFilter

    out: dict = {}
    cursor = None
    while len(out) < n:
        page = instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=5000, cursor=cursor)
        for r in page.records:
            p = r.asset_materialization.partition
            out.setdefault(p, (r.storage_id, r.asset_materialization.tags["dagster/data_version"]))
        if not page.has_more:
            break
        cursor = page.cursor
    return out


# ------------------------------------------------------------------------------------------ measurements


def load_defs(source: Path, storage: Path, shards: bool = False):
    os.environ.update(LONGVILA_SOURCE=str(source), LONGVILA_STORAGE=str(storage), LONGVILA_EXECUTOR="in_process",
                      LONGVILA_PARTITION_MODE="shards" if shards else "videos")
    from orchestration.definitions import build_defs

    return build_defs()


def _workspace(instance):
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(
        module_name="orchestration.definitions", attribute="defs", working_directory=str(ROOT)),
        location_name="longvila")
    return create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance)


@contextlib.contextmanager
def warm_workspace(instance):
    """The daemon's workspace with the code location already loaded (a running daemon has it loaded)."""
    with _workspace(instance) as ctx:
        entries = ctx.create_request_context().get_code_location_entries()
        errors = [e.load_error for e in entries.values() if e.load_error]
        if errors:
            raise RuntimeError(f"code location failed to load: {errors[0]}")
        yield ctx


def bench_sensor(instance, n: int, source: Path, limit_s: float) -> dict:
    """First tick over N new files and a steady tick, through the sensor daemon's iteration."""
    from dagster._daemon import sensor as sensor_daemon

    source.mkdir(parents=True, exist_ok=True)
    for k in video_keys(n):
        (source / f"{k}.mp4").touch()
    log = logging.getLogger("bench.sensor")
    out = {}
    with warm_workspace(instance) as ctx:
        def one_tick():
            list(sensor_daemon.execute_sensor_iteration(ctx, log, None, None))
            return instance.get_runs_count()

        out["sensor first tick"], runs = measure(one_tick, limit_s)
        out["runs after first tick"] = runs
        real = sensor_daemon.is_under_min_interval
        sensor_daemon.is_under_min_interval = lambda *a, **k: False
        try:
            out["sensor 2nd tick"], _ = measure(one_tick, limit_s)
        finally:
            sensor_daemon.is_under_min_interval = real
    return out


def bench_automation(instance, defs, limit_s: float) -> dict:
    from dagster import evaluate_automation_conditions

    first, res = measure(lambda: evaluate_automation_conditions(defs=defs, instance=instance), limit_s)
    steady = None
    if res is not None:
        steady, _ = measure(lambda: evaluate_automation_conditions(defs=defs, instance=instance, cursor=res.cursor),
                            limit_s)
    return {"automation first": first, "automation steady": steady,
            "automation requested": None if res is None else res.total_requested}


def bench_backfill(instance, keys, limit_s: float) -> dict:
    from dagster import AssetKey
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._daemon.backfill import execute_backfill_iteration

    with warm_workspace(instance) as ctx:
        graph = ctx.create_request_context().asset_graph
        curation = [k for k in graph.materializable_asset_keys if graph.get(k).partitions_def is not None
                    and graph.get(k).group_name == "curation"] or [AssetKey("raw_video")]

        def submit():
            bf = PartitionBackfill.from_asset_partitions(
                backfill_id="bench", asset_graph=graph, partition_names=keys, asset_selection=curation,
                backfill_timestamp=time.time(), tags={}, dynamic_partitions_store=instance, all_partitions=False,
                title=None, description=None, run_config=None)
            instance.add_backfill(bf)

        submit_s, _ = measure(submit, limit_s)
        log = logging.getLogger("bench.backfill")
        iter_s, _ = measure(lambda: list(execute_backfill_iteration(ctx, log)), limit_s)
    return {"backfill submit": submit_s, "backfill first iteration": iter_s,
            "runs after backfill": instance.get_runs_count()}


def bench_lineage(instance, keys, target: str, limit_s: float) -> dict:
    from orchestration.lineage import fed_by, lineage

    key = keys[len(keys) // 2]
    audit, rep = measure(lambda: lineage(instance, target), limit_s)
    video, yes = measure(lambda: fed_by(lineage(instance, target, video=key), key), limit_s)
    return {"lineage audit": audit, "lineage --video": video,
            "lineage raw videos": None if rep is None else len(rep["raw_videos"]), "lineage fed": yes}


# ------------------------------------------------------------------------------------------ driver


def run_size(n: int, db: str, pg, limit_s: float, steps: set[str], history_max: int,
             shard_size: int | None = None) -> dict:
    """One row. Per-video mode (`shard_size` None): partitions are videos, the audit starts at stage 5.
    Shard mode: partitions are shards of `shard_size` videos, the audit starts at stage 3 (the deepest
    checkpoint shard mode feeds); the sensor and backfill steps run in per-video mode only."""
    from dagster import DagsterInstance

    from orchestration.bulk import add_partitions

    mode = "videos" if shard_size is None else f"shards of {shard_size:,}"
    row: dict = {"videos": n, "db": db, "mode": mode}
    keys = video_keys(n)
    parts = keys if shard_size is None else [f"s{i + 1:06d}" for i in range(-(-n // shard_size))]
    target = "stage5_long_sft" if shard_size is None else "stage3_short_sft"
    work = Path(tempfile.mkdtemp(prefix="scale-work-"))
    try:
        defs = load_defs(work / "raw", work / "lake", shards=shard_size is not None)
        if "sensor" in steps and shard_size is None:
            with bench_home(db, pg), DagsterInstance.get() as inst:
                row.update(bench_sensor(inst, n, work / "raw", limit_s))
        with bench_home(db, pg), DagsterInstance.get() as inst:
            row["partition add"] = measure(lambda: add_partitions(inst, "videos" if shard_size is None
                                                                  else "video_shards", parts), limit_s)[0]
            t0 = time.perf_counter()
            history = len(parts) if db == "postgres" or shard_size else min(n, history_max)
            row.update({f"fabricated {k}": v for k, v in
                        fabricate_history(inst, defs, parts, keys, work / "lake", history, target).items()})
            row["history partitions"] = history
            row["fabrication s"] = time.perf_counter() - t0
            if "lineage" in steps:
                row.update(bench_lineage(inst, keys, target, limit_s))
            if "automation" in steps:
                row.update(bench_automation(inst, defs, limit_s))
            if "backfill" in steps and shard_size is None:
                row.update(bench_backfill(inst, keys, limit_s))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row


COLUMNS = ["partition add", "sensor first tick", "sensor 2nd tick", "automation first", "automation steady",
           "backfill submit", "backfill first iteration", "lineage audit", "lineage --video"]


def fmt(v, limit_s: float) -> str:
    if v is None:
        return f"> {limit_s:.0f}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def table(rows: list[dict], limit_s: float) -> str:
    head = "| videos | partitions | db | " + " | ".join(f"{c} (s)" for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = []
        for c in COLUMNS:
            if c not in r:
                cells.append("-")
                continue
            cell = fmt(r[c], limit_s)
            target = TARGETS.get(c)
            if target is not None:
                cell += " ok" if (r[c] is not None and r[c] <= target) else " MISSED"
            cells.append(cell)
        lines.append(f"| {r['videos']:,} | {r['mode']} | {r['db']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000", help="comma-separated video counts (one partition per video)")
    p.add_argument("--shard-sizes", default="", help="comma-separated video counts in shard mode (e.g. 1000000)")
    p.add_argument("--shard-size", type=int, default=10_000, help="videos per shard in shard mode")
    p.add_argument("--db", default="both", choices=["sqlite", "postgres", "both"])
    p.add_argument("--limit-s", type=float, default=300.0, help="stop a measurement after this many seconds")
    p.add_argument("--steps", default="sensor,automation,backfill,lineage")
    p.add_argument("--history-max", type=int, default=2000,
                   help="SQLite: per-video history fabricated for at most this many videos (SQLite stores one "
                        "event per call: ~5-25 ms each); PostgreSQL gets all (batched inserts)")
    p.add_argument("--out", default=str(RESULTS / "scale"), help="results path prefix (.json and .md)")
    a = p.parse_args(argv)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    shard_sizes = [int(s) for s in a.shard_sizes.split(",") if s]
    dbs = ["sqlite", "postgres"] if a.db == "both" else [a.db]
    steps = set(a.steps.split(","))
    rows: list[dict] = []
    pg_cm = contextlib.nullcontext(None)
    if "postgres" in dbs:
        from longvila.pgserver import PostgresServer

        pg_cm = PostgresServer()
    plan = [(n, None) for n in sizes] + [(n, a.shard_size) for n in shard_sizes]
    with pg_cm as pg:
        for n, shard in plan:
            for db in dbs:
                rows.append(run_size(n, db, pg, a.limit_s, steps, a.history_max, shard))
                print(json.dumps(rows[-1], default=str), flush=True)
    load = os.getloadavg()[0]
    md = (f"# bench/scale.py\n\nload average {load:.1f} at the end; limit {a.limit_s:.0f} s per measurement; "
          f"targets: {', '.join(f'{k} <= {v:g} s' for k, v in TARGETS.items())}\n\n{table(rows, a.limit_s)}\n")
    print(md)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"load": load, "limit_s": a.limit_s, "rows": rows}, indent=1,
                                                   default=str))
    out.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
