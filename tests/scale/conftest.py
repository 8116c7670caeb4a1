"""Fixtures of the scale tests: a Dagster instance on SQLite and on PostgreSQL (`deploy/dagster-postgres.yaml`
against a throwaway server started here, one fresh database per test)."""

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
    """DAGSTER_HOME with the instance configuration of `backend` (sqlite: Dagster's defaults)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    if backend == "postgres":
        pg = request.getfixturevalue("pg_server")
        for k, v in {**pg.dagster_env(), "DAGSTER_PG_DB": _fresh_database(pg)}.items():
            monkeypatch.setenv(k, v)
        shutil.copy(POSTGRES_YAML, home / "dagster.yaml")
    else:
        (home / "dagster.yaml").write_text("# SQLite storage (Dagster's defaults)\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def instance(dagster_home):
    from dagster import DagsterInstance

    with DagsterInstance.get() as inst:
        yield inst
