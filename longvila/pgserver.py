"""A throwaway local PostgreSQL server: ``initdb`` + ``pg_ctl`` in a temporary folder on a free loopback port.

Used by the scale tests (the Dagster instance on PostgreSQL next to SQLite), by ``bench/scale.py
--db postgres`` and by anyone who wants to try ``deploy/dagster-postgres.yaml`` on one machine::

    with PostgresServer() as pg:
        print(pg.url)          # postgresql://dagster:<password>@127.0.0.1:<port>/dagster
        os.environ.update(pg.dagster_env())

Contract:
* the binaries come from ``$LONGVILA_PG_BIN``, the ``PATH`` or Debian's ``/usr/lib/postgresql/<major>/bin``
  (package ``postgresql``; ``make test`` installs it when missing). `find_pg_bin` raises a
  `RuntimeError` naming what is missing;
* PostgreSQL refuses to run as root: when this process is root, the server runs as the ``postgres``
  user (created by the Debian package), else ``nobody``; the data folder is handed to that user;
* the server listens on 127.0.0.1 only, password (scram-sha-256) authentication over TCP, with
  ``fsync=off`` (a throwaway server: durability is not wanted, speed is);
* start waits at most ``start_timeout_s``; `stop` is a fast shutdown, then the folder is removed.
  Nothing outlives the ``with`` block (or `stop`).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from .ports import free_port

PG_BIN_ENV = "LONGVILA_PG_BIN"
DB_NAME = "dagster"
DB_USER = "dagster"


def find_pg_bin() -> Path:
    """The folder that holds ``initdb`` and ``pg_ctl`` (newest Debian major version first)."""
    candidates = [os.environ.get(PG_BIN_ENV)] if os.environ.get(PG_BIN_ENV) else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(os.path.realpath(on_path)).parent))
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    candidates += debian
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql` package "
        f"(`make test` does) or set {PG_BIN_ENV}"
    )


def _server_user() -> Optional[pwd.struct_passwd]:
    """The unprivileged account the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists")


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; see the module docstring."""

    def __init__(self, port: Optional[int] = None, start_timeout_s: float = 60.0):
        self.bin = find_pg_bin()
        self.port = port or free_port()
        self.password = secrets.token_hex(12)
        self.start_timeout_s = start_timeout_s
        self.root: Optional[Path] = None
        self._user = _server_user()

    # ------------------------------------------------------------------ lifecycle

    def _run(self, *args: str, timeout: float = 120.0) -> None:
        kw = {}
        if self._user is not None:
            kw = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        proc = subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=str(self.root), **kw)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")

    def start(self) -> "PostgresServer":
        self.root = Path(tempfile.mkdtemp(prefix="longvila-pg-"))
        data, sock = self.root / "data", self.root / "sock"
        sock.mkdir()
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._user is not None:
            for p in (self.root, sock, pwfile):
                os.chown(p, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", str(data), "-U", DB_USER, "--pwfile", str(pwfile), "-E", "UTF8",
                  "--auth-local", "trust", "--auth-host", "scram-sha-256", "--no-sync")
        opts = (f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-o", opts,
                  "-w", "-t", str(int(self.start_timeout_s)), "start", timeout=self.start_timeout_s + 30)
        self._run("createdb", "-h", str(sock), "-p", str(self.port), "-U", DB_USER, DB_NAME)
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ how to connect

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{DB_NAME}"

    def dagster_env(self) -> dict[str, str]:
        """The variables read by ``deploy/dagster-postgres.yaml``."""
        return {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USERNAME": DB_USER,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": DB_NAME}

    def log_tail(self, chars: int = 4000) -> str:
        log = (self.root / "server.log") if self.root else None
        return log.read_text(errors="replace")[-chars:] if log and log.exists() else ""


def main() -> None:
    """``python -m longvila.pgserver``: start a server, print its variables, stop on Ctrl-C."""
    import signal

    with PostgresServer() as pg:
        for k, v in pg.dagster_env().items():
            print(f"export {k}={v}")
        print(f"# {pg.url}  (Ctrl-C stops the server and deletes its data)", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()


__all__ = ["PG_BIN_ENV", "PostgresServer", "find_pg_bin"]
