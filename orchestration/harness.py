"""A real ``dagster-daemon`` on a fresh project instance, driven from Python (tests and bench/orchestration.py).

`ProjectDaemon(workdir, workspace=...)` writes the project's dagster.yaml (`orchestration.instance`) into
``<workdir>/dagster_home``, creates the instance storage, then starts ``dagster-daemon run -w
<workspace>`` from the repository root with LONGVILA_SOURCE = ``<workdir>/raw`` and LONGVILA_STORAGE =
``<workdir>/lake``: sensors, automation, the run queue, the launcher and run monitoring all run as in
``longvila dev``. The object then offers what a user does and sees:

* `land(path)`: a video appears in the source at once (copied under a hidden name, then renamed, as an
  upload does);
* `runs(partition)`, `wait_for_runs(...)`: the runs and their outcome, polled from the instance;
* `wait_for_ticks(name, n)`: until a sensor (or the automation sensor) completed `n` more ticks;
* `stop()`: ends the daemon and its children.

`processes_mentioning(needle)` lists the processes whose command line contains `needle` (a run's storage
path): how the tests check that no training rank outlives a cancelled run.

Every wait polls with a deadline and fails with the daemon log's path; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from .instance import instance_yaml

REPO = Path(__file__).resolve().parents[1]
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


class ProjectDaemon:
    def __init__(self, workdir: Path, workspace: Optional[Path] = None, env: Optional[dict] = None,
                 cpus: Optional[int] = None, pooled_sqlite: bool = True):
        from dagster import DagsterInstance

        self.workdir = Path(workdir)
        self.home = self.workdir / "dagster_home"
        self.source, self.storage = self.workdir / "raw", self.workdir / "lake"
        for d in (self.home, self.source):
            d.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text(instance_yaml(cpus, self.home, pooled_sqlite))
        self.workspace = Path(workspace or REPO / "workspace.yaml")
        self.env = {**os.environ, **(env or {}), "DAGSTER_HOME": str(self.home), "LONGVILA_SOURCE": str(self.source),
                    "LONGVILA_STORAGE": str(self.storage)}
        self.instance = DagsterInstance.from_config(str(self.home))
        self.instance.get_runs(limit=1)  # creates the storage before the daemon opens it
        self.log_path = self.workdir / "daemon.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w",
                                      str(self.workspace)], cwd=REPO, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    # ------------------------------------------------------------------------------------- actions
    def land(self, path: Path, name: Optional[str] = None) -> Path:
        dest = self.source / (name or Path(path).name)
        tmp = dest.parent / f".{dest.name}.uploading"
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        return dest

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``dagster <args> -w <workspace>`` against this instance (what a user types)."""
        exe = str(Path(sys.executable).with_name("dagster"))
        return subprocess.run([exe, *args, "-w", str(self.workspace)], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=True)

    # ------------------------------------------------------------------------------------- queries
    def runs(self, partition: Optional[str] = None) -> list:
        runs = self.instance.get_runs()
        return [r for r in runs if partition is None or r.tags.get("dagster/partition") == partition]

    def wait(self, what: str, ready: Callable[[], object], timeout: float = 300, every: float = 0.5):
        """Poll `ready()` until it returns something truthy (returned) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = ready()
            if got:
                return got
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited ({self.proc.returncode}); see {self.log_path}")
            time.sleep(every)
        raise TimeoutError(f"{what}: not within {timeout:.0f} s; see {self.log_path}")

    def wait_for_runs(self, partitions: set[str], count: Optional[int] = None, timeout: float = 300) -> list:
        """Until `partitions` have (at least `count`) runs and all of them are finished; returns those runs."""

        def ready():
            runs = [r for r in self.runs() if r.tags.get("dagster/partition") in partitions]
            done = {r.tags["dagster/partition"] for r in runs}
            enough = len(runs) >= count if count is not None else done == set(partitions)
            return runs if enough and all(r.status.value in FINISHED for r in runs) else None

        return self.wait(f"runs of {sorted(partitions)}", ready, timeout)

    def ticks(self, name: str, after: float = 0.0) -> list:
        from dagster._core.scheduler.instigation import TickStatus

        states = [s for s in self.instance.all_instigator_state() if s.name == name]
        if not states:
            return []
        ticks = self.instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id, after=after)
        return [t for t in ticks if t.status in (TickStatus.SUCCESS, TickStatus.SKIPPED)]

    def wait_for_ticks(self, name: str, n: int = 1, after: Optional[float] = None, timeout: float = 300) -> None:
        """Until `name` completed `n` ticks that started after `after` (default: now)."""
        after = time.time() if after is None else after
        self.wait(f"{n} tick(s) of {name}", lambda: len(self.ticks(name, after)) >= n, timeout)

    def stop(self) -> None:
        """Terminate unfinished runs (their workers have their own sessions), then the daemon's process group."""
        for run in self.runs():
            if run.status.value not in FINISHED:
                try:
                    self.instance.run_launcher.terminate(run.run_id)
                except Exception:  # noqa: BLE001 - best effort at teardown
                    pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.instance.dispose()
        self._log.close()


def processes_mentioning(needle: str) -> list[int]:
    """Pids of this machine's processes (this one excepted) whose command line contains `needle` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            out.append(int(d.name))
    return out
