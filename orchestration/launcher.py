"""`WarmRunLauncher`: runs start in processes forked from a warm one, not in a fresh interpreter.

Dagster's default launcher starts every run in a new Python process that imports Dagster, torch and the
project's code location again: several seconds per run, as long as curating a short video. This
launcher keeps one *warm process* per code location (same interpreter, working directory and code
pointer as the run's origin). The warm process imports the code location once, then waits on a Unix
socket; for each run it forks a child that executes the run exactly as ``dagster api execute_run``
does (`dagster._cli.api`), in its own session, with Dagster's interrupt handling. Runs still execute
in parallel (one child each; the run queue bounds how many) and in their own process, so a crash or
a cancelled run stays local.

* Warmth: besides the code location, the warm process imports what runs imported lazily (transformers
  and the model classes of the captioner, PyAV, pandas, ...): each worker records its module names when
  it ends, and the warm process imports the new ones while idle (imports only, never model weights or
  any computation, so nothing but code is shared by fork). The names are kept in
  ``<DAGSTER_HOME>/longvila-warm/modules.txt`` for the next warm process. Should an import ever leave
  a thread running, the warm process stops learning (forking a threaded process is unsafe) and is
  replaced without the learned modules.
* Freshness: the warm process is replaced when any ``*.py`` file under its working directory changed
  since it started (a code edit, a reload from the UI) or when it died.
* Termination (the UI's Terminate button: `terminate`): the run is marked CANCELING and its worker
  gets SIGINT, which Dagster turns into a cancelled step; Pipes clients forward it to their
  subprocesses (training ranks). Workers are found by the pid and host recorded in the run's tags.
* Health (run monitoring): a worker whose pid is gone while its run is not finished is reported
  FAILED, so the monitoring daemon fails the run instead of leaving it STARTED.

Configure it in dagster.yaml (`orchestration.instance` writes this)::

    run_launcher:
      module: orchestration.launcher
      class: WarmRunLauncher
      config: {preload: [transformers]}   # optional: more modules to import in the warm process

The fork model needs a POSIX system and a warm process without threads at fork time (checked).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import dagster._check as check
from dagster import Array, Field
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from longvila.locks import pid_alive

PID_TAG = "longvila/worker_pid"
HOST_TAG = "longvila/worker_host"
START_TIMEOUT_S = 120.0
_SKIP_DIRS = {"data", "node_modules", "__pycache__", "runs"}


def code_fingerprint(root: str) -> str:
    """Digest of the paths, sizes and mtimes of the ``*.py`` files under `root` (hidden and data folders skipped)."""
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class _WarmProcess:
    """One warm process for one code origin, reached on a Unix socket."""

    def __init__(self, origin, preload: list[str], learn_dir: str):
        from dagster._serdes import serialize_value

        repo = origin.repository_origin
        self.workdir = getattr(repo.code_pointer, "working_directory", None) or os.getcwd()
        self.fingerprint = code_fingerprint(self.workdir)
        self.socket_path = os.path.join(tempfile.mkdtemp(prefix="longvila-warm-"), "sock")
        cmd = [repo.executable_path or sys.executable, "-m", "orchestration.launcher", "--socket", self.socket_path,
               "--origin", serialize_value(origin), "--learn-dir", learn_dir, *(f"--preload={m}" for m in preload)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [self.workdir, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(self.socket_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"warm process for {self.workdir} did not start (exit code {self.proc.returncode})")
            time.sleep(0.05)

    def usable(self) -> bool:
        return self.proc.poll() is None and code_fingerprint(self.workdir) == self.fingerprint

    def start_run(self, run_id: str, instance_ref: str) -> int:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(self.socket_path)
            s.sendall(json.dumps({"run_id": run_id, "instance_ref": instance_ref}).encode() + b"\n")
            reply = json.loads(s.makefile().readline())
        if "pid" not in reply:
            raise RuntimeError(f"warm process could not start run {run_id}: {reply.get('error')}")
        return int(reply["pid"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a process forked from a warm process of its code location (module docstring)."""

    def __init__(self, preload: Optional[list[str]] = None, inst_data: Optional[ConfigurableClassData] = None):
        self._inst_data = inst_data
        self._preload = list(preload or [])
        self._warm: dict[str, _WarmProcess] = {}
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> Optional[ConfigurableClassData]:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {"preload": Field(Array(str), is_required=False,
                                 description="modules to import in the warm process besides the code location")}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: dict[str, Any]) -> "WarmRunLauncher":
        return cls(inst_data=inst_data, **config_value)

    def _warm_process(self, origin) -> _WarmProcess:
        from dagster._serdes import serialize_value

        key = serialize_value(origin.repository_origin)
        with self._lock:
            warm = self._warm.get(key)
            if warm is None or not warm.usable():
                if warm is not None:
                    warm.stop()
                learn_dir = os.path.join(self._instance.root_directory, "longvila-warm")
                warm = self._warm[key] = _WarmProcess(origin, self._preload, learn_dir)
            return warm

    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._serdes import serialize_value

        run = context.dagster_run
        origin = check.not_none(run.job_code_origin, "WarmRunLauncher needs runs with a job code origin")
        pid = self._warm_process(origin).start_run(run.run_id, serialize_value(self._instance.get_ref()))
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(pid), HOST_TAG: socket.gethostname()})

    def _worker_pid(self, run) -> Optional[int]:
        tags = run.tags if run else {}
        if PID_TAG not in tags or tags.get(HOST_TAG) != socket.gethostname():
            return None
        return int(tags[PID_TAG])

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        pid = self._worker_pid(run)
        if run is None or run.is_finished or pid is None or not pid_alive(pid):
            return False
        self._instance.report_run_canceling(run)
        os.kill(pid, signal.SIGINT)  # Dagster's interrupt: the step is cancelled, Pipes forward it
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        pid = self._worker_pid(run)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no worker pid recorded on this host")
        if pid_alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker (pid {pid}) is gone", run_worker_id=str(pid))

    def dispose(self) -> None:
        with self._lock:
            for warm in self._warm.values():
                warm.stop()
            self._warm.clear()


# ----------------------------------------------------------------------------------------- warm process
class _Learner:
    """Module names that workers imported, recorded in `directory` and imported by the warm process."""

    def __init__(self, directory: str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.known = self.dir / "modules.txt"
        self.disabled = self.dir / "disabled"
        self.state = self.dir / "state"  # "learning" while importing, "complete" once nothing is left

    def record(self) -> None:
        """In a worker at its end: the names of its modules."""
        (self.dir / f"worker-{os.getpid()}.txt").write_text("\n".join(sorted(sys.modules)))

    def learn(self, interrupted=lambda: False) -> None:
        """In the warm process: merge what workers recorded and import the modules not imported yet
        (until `interrupted()`: a waiting run comes first, the rest is imported at the next idle moment)."""
        if self.disabled.exists():
            return
        names = set(self.known.read_text().split()) if self.known.exists() else set()
        recorded = list(self.dir.glob("worker-*.txt"))
        if recorded:
            for f in recorded:
                names |= set(f.read_text().split())
                f.unlink(missing_ok=True)
            tmp = self.dir / f".modules-{os.getpid()}.txt"
            tmp.write_text("\n".join(sorted(names)))
            os.replace(tmp, self.known)
        missing = [n for n in sorted(names) if n not in sys.modules]
        if missing:
            self.state.write_text("learning\n")
            _import_quietly(missing, interrupted)
            if not interrupted():
                self.state.write_text("complete\n")
        if threading.active_count() != 1:
            self.disabled.write_text("an import left a thread running; learned preloading is off\n")
            raise SystemExit("warm process: an import started a thread; exiting (the launcher starts a new one)")


def _import_quietly(names, interrupted=lambda: False) -> None:
    """Import `names`, skipping those that fail; stop early when `interrupted()` (a run is waiting)."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            if interrupted():
                return
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - a name that does not import (generated, private) is skipped
                pass


def _execute_run(run_id: str, instance_ref: str) -> int:
    """In the forked child: what ``dagster api execute_run`` does with the run."""
    from dagster import DagsterInstance
    from dagster._cli.api import _execute_run_command_body
    from dagster._serdes import deserialize_value
    from dagster._utils.interrupts import capture_interrupts

    with capture_interrupts(), DagsterInstance.from_ref(deserialize_value(instance_ref)) as instance:
        return _execute_run_command_body(run_id, instance, lambda event: None, set_exit_code_on_failure=False)


def _fork_run(conn: socket.socket, listener: socket.socket, learner: _Learner) -> None:
    request = json.loads(conn.makefile().readline())
    if threading.active_count() != 1:
        conn.sendall(json.dumps({"error": "warm process has threads; refusing to fork"}).encode() + b"\n")
        return
    pid = os.fork()
    if pid == 0:  # the run's worker
        code = 1
        try:
            listener.close()
            conn.close()
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = _execute_run(request["run_id"], request["instance_ref"])
            learner.record()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _reap(*_args) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def serve(socket_path: str, origin_json: str, preload: list[str], learn_dir: str) -> None:
    """The warm process: import the code location, `preload` and the learned modules, then fork one worker
    per request (learning between requests) until the launcher that started it is gone."""
    from dagster._serdes import deserialize_value

    origin = deserialize_value(origin_json)
    origin.repository_origin.code_pointer.load_target()  # imports the code location (and torch, ...)
    _import_quietly(preload)
    learner = _Learner(learn_dir)
    learner.learn()
    parent = os.getppid()
    signal.signal(signal.SIGCHLD, _reap)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = socket_path + ".tmp"
    listener.bind(tmp)
    listener.listen(16)
    listener.settimeout(1.0)
    os.rename(tmp, socket_path)  # the launcher waits for this name
    try:
        while os.getppid() == parent:
            try:
                conn, _ = listener.accept()
            except (socket.timeout, InterruptedError):
                learner.learn(interrupted=lambda: bool(select.select([listener], [], [], 0)[0]))
                continue
            with conn:
                conn.settimeout(30)
                _fork_run(conn, listener, learner)
    finally:
        listener.close()
        Path(socket_path).unlink(missing_ok=True)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="warm process of orchestration.launcher.WarmRunLauncher")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--origin", required=True, help="serialized JobPythonOrigin")
    ap.add_argument("--preload", action="append", default=[])
    ap.add_argument("--learn-dir", required=True, help="where workers record the modules they imported")
    args = ap.parse_args(argv)
    serve(args.socket, args.origin, args.preload, args.learn_dir)


if __name__ == "__main__":
    main()
