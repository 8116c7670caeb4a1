"""One launch spec for multi-node training, rendered for three launchers.

`LaunchSpec` = nodes x processes per node, the SP degrees, a static rendezvous address and the
``training.train`` arguments. It is validated once (`LaunchSpec.__post_init__`): the world divides into
SP groups, and the Ulysses degree divides the processes per node (training.sp.groups
`check_ulysses_within_node`), so Ulysses all-to-alls never cross nodes.

Static rendezvous: every torchrun agent gets ``--nnodes N --node-rank n --master-addr A --master-port P``
(torchrun's ``static`` rendezvous), so node ``n`` holds global ranks ``n*L .. n*L+L-1``. Node 0 therefore
holds global rank 0, which hosts the TCP store and is the only rank that opens the Dagster Pipes context
and writes checkpoints. (With c10d rendezvous rank 0 could land on any node.)

Renderings:

* `LaunchSpec.local_commands`: N agents ``python -m training.launch ...`` on one machine (127.0.0.1);
  `run_local` starts them, streams their output, and stops every agent when one fails, when a timeout
  passes, or on SIGTERM (what Dagster's ``forward_termination`` sends).
* `LaunchSpec.k8s_objects`: a headless Service plus an Indexed Job of N pods (one agent per pod, node rank
  = the pod's completion index, master = pod 0's stable DNS name), as ``kubernetes`` client models.
* `run_ray`: Ray Train's ``TorchTrainer`` with N*L workers; Ray forms the process group and the unchanged
  ``training.train`` runs in each worker. Results travel by the Pipes channel of rank 0 (a file or blob
  store), never by parsing worker logs; the driver returns the rank-0 result dict.

Command line (what the ``training_launcher`` resource runs through Dagster Pipes)::

    python -m training.multinode local --nnodes 2 --nproc-per-node 1 -- --recipe smoke --stage 5 ...
    python -m training.multinode ray --address auto --nnodes 2 --nproc-per-node 1 -- ...
    python -m training.multinode k8s-render --nnodes 4 --nproc-per-node 8 --image IMG -- ...   # YAML
    (the launcher's options, then ``--``, then the training.train arguments)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from longvila.ports import free_port

from .sp.groups import check_ulysses_within_node

DEFAULT_PORT = 29500
TRAIN_MODULE = "training.train"


@dataclass(frozen=True)
class LaunchSpec:
    nnodes: int = 1
    nproc_per_node: int = 1
    ulysses_degree: int = 1
    ring_degree: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    train_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise ValueError(f"nnodes and nproc_per_node must be >= 1, got {self.nnodes} x {self.nproc_per_node}")
        sp = self.ulysses_degree * self.ring_degree
        if self.world_size % sp != 0:
            raise ValueError(f"world {self.nnodes}x{self.nproc_per_node} = {self.world_size} is not divisible by "
                             f"the SP degree {self.ulysses_degree}x{self.ring_degree}")
        check_ulysses_within_node(self.ulysses_degree, self.nproc_per_node)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def torchrun_args(self, node_rank: int | str) -> list[str]:
        """torchrun arguments of one agent (static rendezvous), then the training module, the validated SP
        degrees and the training arguments."""
        return ["--nnodes", str(self.nnodes), "--nproc-per-node", str(self.nproc_per_node),
                "--node-rank", str(node_rank), "--master-addr", self.master_addr,
                "--master-port", str(self.master_port), "-m", TRAIN_MODULE, *self.trainer_args()]

    def trainer_args(self) -> list[str]:
        """The training.train arguments: the validated SP degrees, then ``train_args``."""
        return ["--ulysses-degree", str(self.ulysses_degree), "--ring-degree", str(self.ring_degree),
                *self.train_args]

    def local_commands(self, python: str = sys.executable) -> list[list[str]]:
        """One ``python -m training.launch`` agent per node (torchrun that dies with its launcher)."""
        return [[python, "-m", "training.launch", *self.torchrun_args(n)] for n in range(self.nnodes)]

    def k8s_objects(self, name: str, image: str, namespace: str = "default", gpus_per_node: int = 0,
                    pod_overrides: Optional[dict[str, Any]] = None):
        """(V1Service, V1Job): a headless Service and an Indexed Job of ``nnodes`` pods."""
        from .multinode_k8s import render_k8s

        return render_k8s(self, name, image, namespace, gpus_per_node, pod_overrides or {})


# ------------------------------------------------------------------------------------ local agents


def _pump(stream, sink: Callable[[str], None]) -> None:
    for line in iter(stream.readline, ""):
        sink(line)
    stream.close()


def _stop_all(procs: list[subprocess.Popen], grace_s: float = 15.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_local(spec: LaunchSpec, timeout_s: float = 3600.0, cwd: Optional[str] = None,
              sink: Callable[[str], None] = lambda s: print(s, end="", flush=True)) -> int:
    """Start every node's agent on this machine and wait; returns 0 or the first failing agent's code.

    One failing agent stops the others (a static rendezvous cannot recover a lost node); so do the
    timeout and SIGTERM/SIGINT to this process.
    """
    env = {**os.environ, **spec.env}
    procs = [subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in spec.local_commands()]
    pumps = [threading.Thread(target=_pump, args=(p.stdout, lambda s, n=n: sink(f"[node {n}] {s}")), daemon=True)
             for n, p in enumerate(procs)]
    for t in pumps:
        t.start()
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    deadline = time.monotonic() + timeout_s
    code = 0
    try:
        while not stop.is_set():
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                code = failed[0]
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                sink(f"[multinode] timeout after {timeout_s:.0f} s: stopping every agent\n")
                code = 124
                break
            time.sleep(0.2)
        else:
            code = 143
    finally:
        _stop_all(procs)
        for t in pumps:
            t.join(5)
        for s, h in previous.items():
            signal.signal(s, h)
    return code


# ------------------------------------------------------------------------------------ Ray Train


def _ray_worker(config: dict) -> None:
    """Runs in every Ray Train worker: Ray has initialised torch.distributed; run the unchanged trainer."""
    import ray.train

    from .train import main as train_main

    os.environ.update(config["env"])
    ctx = ray.train.get_context()
    local_world = ctx.get_local_world_size()
    if local_world != config["nproc_per_node"]:
        raise RuntimeError(f"Ray placed {local_world} workers on machine {ctx.get_node_rank()}, the spec asks for "
                           f"{config['nproc_per_node']} per machine (size resources_per_worker to match the machines)")
    os.environ["LOCAL_WORLD_SIZE"] = str(local_world)  # read by training.sp.groups' node check
    code = train_main(list(config["train_args"]))
    if code:
        raise RuntimeError(f"training.train exited with {code} on rank {ctx.get_world_rank()}")


def run_ray(spec: LaunchSpec, address: Optional[str] = None, use_gpu: bool = False,
            resources_per_worker: Optional[dict[str, float]] = None, storage_path: Optional[str] = None,
            placement_strategy: str = "PACK", name: str = "longvila-train"):
    """Train with Ray Train's TorchTrainer over ``spec.world_size`` workers; returns Ray's Result.

    Ray Train orders the workers by machine (IP), so consecutive ranks share a machine, and reports the
    workers per machine as the local world size, which must equal ``spec.nproc_per_node`` (size
    ``resources_per_worker`` so that Ray packs that many per machine). ``storage_path`` must be shared by
    all nodes on a real cluster (Ray Train keeps its run state there).
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"env": dict(spec.env), "train_args": spec.trainer_args(),
                           "nproc_per_node": spec.nproc_per_node},
        scaling_config=ScalingConfig(num_workers=spec.world_size, use_gpu=use_gpu,
                                     resources_per_worker=resources_per_worker or {"CPU": 1},
                                     placement_strategy=placement_strategy),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage_path),
    )
    return trainer.fit()


# ------------------------------------------------------------------------------------ CLI


def _pipes_env() -> dict[str, str]:
    """The Dagster Pipes bootstrap variables of this process, forwarded to every rank (rank 0 uses them)."""
    return {k: v for k, v in os.environ.items() if k.startswith("DAGSTER_PIPES_")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.multinode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("launcher", choices=["local", "ray", "k8s-render"])
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--ulysses-degree", type=int, default=1)
    p.add_argument("--ring-degree", type=int, default=1)
    p.add_argument("--master-addr", default="127.0.0.1")
    p.add_argument("--master-port", type=int, default=None, help="default: local: a free port; else 29500")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="local: stop every agent after this")
    p.add_argument("--address", default=None, help="ray: cluster address (default: RAY_ADDRESS or a local one)")
    p.add_argument("--storage-path", default=None, help="ray: shared folder or URI for Ray Train's run state")
    p.add_argument("--image", default=None, help="k8s-render: container image")
    p.add_argument("--name", default="longvila-train", help="k8s-render: Job/Service name")
    p.add_argument("--namespace", default="default")
    p.add_argument("--gpus-per-node", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    ns = build_parser().parse_args(argv[:cut])
    train_args = tuple(argv[cut + 1:])  # everything after `--` goes to training.train
    spec = LaunchSpec(nnodes=ns.nnodes, nproc_per_node=ns.nproc_per_node, ulysses_degree=ns.ulysses_degree,
                      ring_degree=ns.ring_degree, master_addr=ns.master_addr,
                      master_port=ns.master_port or (free_port() if ns.launcher == "local" else DEFAULT_PORT),
                      train_args=train_args, env=_pipes_env())
    if ns.launcher == "local":
        return run_local(spec, timeout_s=ns.timeout_s)
    if ns.launcher == "ray":
        run_ray(spec, address=ns.address, storage_path=ns.storage_path)
        return 0
    if not ns.image:
        raise SystemExit("k8s-render needs --image")
    from .multinode_k8s import to_yaml

    print(to_yaml(spec.k8s_objects(ns.name, ns.image, ns.namespace, ns.gpus_per_node)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
