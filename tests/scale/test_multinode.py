"""Multi-node launch spec (training.multinode): validation, static rendezvous, the Kubernetes objects (as
kubernetes client models), and two torchrun agents on 127.0.0.1 against one node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longvila.ports import free_port
from training.multinode import LaunchSpec, run_local
from training.multinode_k8s import INDEX_ANNOTATION, to_yaml
from training.sp.groups import check_ulysses_within_node

ROOT = Path(__file__).resolve().parents[2]


def test_ulysses_degree_must_divide_processes_per_node():
    check_ulysses_within_node(4, 8)
    with pytest.raises(ValueError, match="does not divide the 1 processes per node"):
        LaunchSpec(nnodes=2, nproc_per_node=1, ulysses_degree=2)  # the old README example
    with pytest.raises(ValueError, match="does not divide the 4 processes per node"):
        LaunchSpec(nnodes=2, nproc_per_node=4, ulysses_degree=8)
    with pytest.raises(ValueError, match="not divisible by the SP degree"):
        LaunchSpec(nnodes=3, nproc_per_node=2, ulysses_degree=2, ring_degree=2)
    assert LaunchSpec(nnodes=4, nproc_per_node=8, ulysses_degree=8, ring_degree=4).world_size == 32


def test_static_rendezvous_puts_rank_zero_on_node_zero():
    spec = LaunchSpec(nnodes=3, nproc_per_node=2, ring_degree=2, master_port=29999, train_args=("--max-steps", "2"))
    cmds = spec.local_commands(python="py")
    assert len(cmds) == 3
    for n, cmd in enumerate(cmds):
        assert cmd[:3] == ["py", "-m", "training.launch"]
        opts = dict(zip(cmd[3:13:2], cmd[4:14:2]))
        assert opts == {"--nnodes": "3", "--nproc-per-node": "2", "--node-rank": str(n),
                        "--master-addr": "127.0.0.1", "--master-port": "29999"}
        assert "--standalone" not in cmd and "--rdzv-backend" not in cmd  # torchrun's static rendezvous
        assert cmd[cmd.index("-m", 3):] == ["-m", "training.train", "--ulysses-degree", "1", "--ring-degree", "2",
                                            "--max-steps", "2"]


def test_kubernetes_objects_are_valid_api_objects():
    from kubernetes.client import ApiClient, V1Job, V1Service

    spec = LaunchSpec(nnodes=4, nproc_per_node=8, ulysses_degree=8, ring_degree=4, train_args=("--recipe", "r"),
                      env={"DAGSTER_PIPES_CONTEXT": "ctx"})
    service, job = spec.k8s_objects("stage5", "registry/longvila:1", namespace="train", gpus_per_node=8,
                                    pod_overrides={"node_selector": {"gpu": "h100"}})
    api = ApiClient()
    # serialise as the API server receives them, then parse back into the typed models (client-side validation)
    round_trip = [api._ApiClient__deserialize(api.sanitize_for_serialization(o), cls)
                  for o, cls in ((service, "V1Service"), (job, "V1Job"))]
    assert isinstance(round_trip[0], V1Service) and isinstance(round_trip[1], V1Job)
    assert round_trip == [service, job]
    s, j = service.spec, job.spec
    assert s.cluster_ip == "None" and s.publish_not_ready_addresses and s.ports[0].port == 29500
    assert j.completion_mode == "Indexed" and j.completions == j.parallelism == 4 and j.backoff_limit == 0
    pod = j.template.spec
    assert pod.subdomain == service.metadata.name and pod.restart_policy == "Never"
    assert s.selector.items() <= j.template.metadata.labels.items()
    assert pod.node_selector == {"gpu": "h100"}
    (c,) = pod.containers
    assert c.resources.limits == {"nvidia.com/gpu": "8"}
    env = {e.name: e for e in c.env}
    assert env["NODE_RANK"].value_from.field_ref.field_path == f"metadata.annotations['{INDEX_ANNOTATION}']"
    assert env["DAGSTER_PIPES_CONTEXT"].value == "ctx"
    cmd = c.command
    assert cmd[cmd.index("--node-rank") + 1] == "$(NODE_RANK)"
    assert cmd[cmd.index("--master-addr") + 1] == "stage5-0.stage5.train.svc"  # pod 0 = node rank 0
    assert "kind: Job" in to_yaml([service, job])


def _train_args(out: Path, steps: int = 3) -> tuple[str, ...]:
    return ("--profile", "smoke", "--max-steps", str(steps), "--output-dir", str(out),
            "--metrics-out", str(out / "metrics.jsonl"), "--num-threads", "1", "--no-export", "--seed", "3")


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if "loss" in r]


def _run_local(out: Path, nnodes: int, nproc: int) -> tuple[list[float], list[str]]:
    lines: list[str] = []
    spec = LaunchSpec(nnodes=nnodes, nproc_per_node=nproc, ring_degree=2, master_port=free_port(),
                      train_args=_train_args(out), env={"OMP_NUM_THREADS": "1"})
    assert run_local(spec, timeout_s=300, cwd=str(ROOT), sink=lines.append) == 0, "".join(lines[-40:])
    return _losses(out), lines


@pytest.fixture(scope="module")
def one_node_losses(tmp_path_factory) -> list[float]:
    """The reference: 1 node x 2 processes, ring SP 2, 3 steps of the smoke model."""
    losses, _ = _run_local(tmp_path_factory.mktemp("one-node"), 1, 2)
    assert len(losses) == 3
    return losses


@pytest.mark.slow
@pytest.mark.distributed
def test_two_agents_on_loopback_match_one_node(tmp_path, one_node_losses):
    """2 nodes x 1 process (ring SP over the two "nodes") gives the same losses as 1 node x 2 processes,
    and global rank 0 runs in node 0."""
    losses, lines = _run_local(tmp_path, 2, 1)
    assert losses == pytest.approx(one_node_losses, rel=1e-6, abs=1e-7)
    assert any(line.startswith("[node 0]") and "rank layout SPGroups(rank=0/2" in line for line in lines)


@pytest.mark.slow
@pytest.mark.distributed
def test_ray_train_on_a_two_node_ray_cluster_matches_torchrun(tmp_path, ray_cluster, one_node_losses):
    """Ray Train's TorchTrainer runs the unchanged trainer on 2 workers, one per raylet (STRICT_SPREAD);
    losses equal torchrun's. Both raylets share this machine's IP, so Ray counts them as one machine with
    2 workers: the spec is 1 x 2."""
    from training.multinode import run_ray

    spec = LaunchSpec(nnodes=1, nproc_per_node=2, ring_degree=2, train_args=_train_args(tmp_path / "out"),
                      env={"OMP_NUM_THREADS": "1"})
    result = run_ray(spec, address=ray_cluster, storage_path=str(tmp_path / "ray"), placement_strategy="STRICT_SPREAD")
    assert result.error is None
    assert _losses(tmp_path / "out") == pytest.approx(one_node_losses, rel=1e-6, abs=1e-7)


@pytest.mark.slow
@pytest.mark.distributed
def test_ulysses_group_across_nodes_is_refused_at_run_time(tmp_path):
    """torchrun agents started by hand (not through LaunchSpec): init_sp_groups refuses a Ulysses group
    that would span the two nodes, on every rank, before any collective."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["--profile", "smoke", "--ulysses-degree", "2", "--max-steps", "1", "--output-dir", str(tmp_path / "o"),
            "--num-threads", "1", "--no-export"]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(n), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               "-m", "training.train", *args], cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for n in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert all("Ulysses degree 2 does not divide the 1 processes per node" in o for o in outs), outs[0][-3000:]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_agents_resume_after_a_kill(tmp_path):
    """2 loopback nodes: a rank is SIGKILLed after step 3 of 4 (checkpoint every 2 steps); every agent stops;
    the re-run with --resume starts both nodes at the same step (rank 0 picks it and broadcasts it) and ends
    with the same losses as an uninterrupted 2-node run."""
    def run(out: Path, *extra: str) -> int:
        lines: list[str] = []
        spec = LaunchSpec(nnodes=2, nproc_per_node=1, ring_degree=2, master_port=free_port(),
                          train_args=(*_train_args(out, steps=4), "--checkpoint-every", "2", *extra),
                          env={"OMP_NUM_THREADS": "1"})
        code = run_local(spec, timeout_s=300, cwd=str(ROOT), sink=lines.append)
        run.lines = lines
        return code

    assert run(tmp_path / "ref") == 0
    reference = _losses(tmp_path / "ref")
    assert run(tmp_path / "killed", "--kill-after-step", "3") != 0
    assert run(tmp_path / "killed", "--resume") == 0, "".join(run.lines[-40:])
    assert any("resumed from" in line and "step 2" in line for line in run.lines), "".join(run.lines[-40:])
    assert _losses(tmp_path / "killed")[-2:] == pytest.approx(reference[-2:], rel=1e-6, abs=1e-7)



def _agents(node_dirs: list[Path], args: list[str], timeout_s: float = 300.0) -> tuple[list[int], list[str]]:
    """One torchrun agent per node directory (its working directory, so a relative --output-dir lands on that
    "node's disk"); once one agent fails the others get 30 s to stop before they are killed, as a cluster
    scheduler would. Returns the exit codes and outputs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    port, logs = free_port(), [d / "agent.log" for d in node_dirs]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(node_dirs)),
                               "--nproc-per-node", "1", "--node-rank", str(n), "--master-addr", "127.0.0.1",
                               "--master-port", str(port), "-m", "training.train", *args], cwd=str(d), env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
             for n, (d, log) in enumerate(zip(node_dirs, logs))]
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            deadline = min(deadline, time.monotonic() + 30)
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    return [p.returncode for p in procs], [log.read_text() for log in logs]


def _node_args(out: str, *extra: str) -> list[str]:
    return ["--profile", "smoke", "--ring-degree", "2", "--max-steps", "4", "--output-dir", out, "--metrics-out",
            f"{out}/metrics.jsonl", "--num-threads", "1", "--no-export", "--seed", "3", "--checkpoint-every", "2",
            *extra]


@pytest.mark.slow
@pytest.mark.distributed
def test_resume_when_only_node_zero_holds_the_checkpoints(tmp_path):
    """Per-node disks: each agent runs in its own directory with a relative --output-dir, so only node 0 has
    the checkpoints (rank 0 writes them). After a kill, --resume on both nodes reads the checkpoint on rank 0
    alone and broadcasts model, optimizer, scheduler, RNG and losses; the run ends with the losses of an
    uninterrupted run."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for d in nodes:
        d.mkdir()
    codes, logs = _agents(nodes, _node_args("ref"))
    assert codes == [0, 0], logs[0][-3000:]
    reference = _losses(nodes[0] / "ref")
    codes, logs = _agents(nodes, _node_args("out", "--kill-after-step", "3"))
    assert codes != [0, 0]
    assert list((nodes[0] / "out").rglob("step-000002")) and not list((nodes[1] / "out").rglob("step-*"))
    codes, logs = _agents(nodes, _node_args("out", "--resume"))
    assert codes == [0, 0], logs[1][-3000:]
    assert any("resumed from" in line and "step 2" in line for line in logs[0].splitlines()), logs[0][-3000:]
    assert _losses(nodes[0] / "out")[-2:] == pytest.approx(reference[-2:], rel=1e-6, abs=1e-7)
