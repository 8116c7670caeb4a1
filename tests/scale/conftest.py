"""Fixtures of the scale tests: the project's Dagster instance (`orchestration.instance.instance_yaml`) on SQLite and
on PostgreSQL (plus `deploy/dagster-postgres.yaml`, against a throwaway server started here, one fresh database
per test)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_YAML = ROOT / "deploy" / "dagster-postgres.yaml"


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server (Debian's binaries, initdb + pg_ctl on a free loopback port) for the session."""
    from longvila.pgserver import PostgresServer

    with PostgresServer() as pg:
        yield pg


def _fresh_database(pg) -> str:
    import psycopg2

    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(pg.url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return name


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def dagster_home(backend, tmp_path, monkeypatch, request) -> Path:
    """DAGSTER_HOME with the project's instance configuration on `backend` (sqlite: Dagster's default storage;
    postgres: the storage section of deploy/dagster-postgres.yaml appended, as README "Scaling out" says)."""
    from orchestration.instance import instance_yaml

    home = tmp_path / "dagster_home"
    home.mkdir()
    config = instance_yaml()
    if backend == "postgres":
        pg = request.getfixturevalue("pg_server")
        for k, v in {**pg.dagster_env(), "DAGSTER_PG_DB": _fresh_database(pg)}.items():
            monkeypatch.setenv(k, v)
        config += POSTGRES_YAML.read_text()
    (home / "dagster.yaml").write_text(config)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def instance(dagster_home):
    from dagster import DagsterInstance

    with DagsterInstance.get() as inst:
        yield inst


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-node Ray cluster: two raylets (1 CPU each) on 127.0.0.1 (ray.cluster_utils.Cluster), and
    this process connected to it as the driver. Yields the GCS address. Ray's session folder is a short
    private temporary folder (its Unix sockets must fit 107 characters), removed afterwards."""
    import os
    import tempfile

    temp = tempfile.mkdtemp(prefix="ray-")
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray use the loopback address for every node (otherwise it
    # advertises the machine's interface address, which this sandbox does not connect to)
    env = dict(RAY_TMPDIR=temp, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.makedirs(os.path.join(temp, "ray"))  # Ray's address file goes to $RAY_TMPDIR/ray, not created by Ray
    import ray
    from ray.cluster_utils import Cluster

    node = dict(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=80 * 1024 * 1024)
    head = {**node, "include_dashboard": False, "temp_dir": os.path.join(temp, "ray")}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        shutil.rmtree(temp, ignore_errors=True)
