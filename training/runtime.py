"""Process-level plumbing of a training run: torch.distributed start-up (gloo on CPU, nccl on GPU), ranks
that die with torchrun, rank-0 logging (also into Dagster Pipes), and small collectives on host scalars."""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def world() -> int:
    return dist.get_world_size() if distributed() else 1


def die_with_parent() -> None:
    """Under torchrun: SIGKILL this rank if the torchrun agent dies (no orphaned ranks)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        from .launch import set_parent_death_signal

        ppid = os.getppid()
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != ppid:
            os._exit(137)


def init_distributed() -> torch.device:
    """Initialise torch.distributed from torchrun's environment (gloo on CPU, nccl on GPU); the device."""
    if int(os.environ.get("WORLD_SIZE", "0")) > 0 and not distributed():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: list[float], group=None) -> list[float]:
    """Element-wise sum of host scalars over `group` (float64; identity without torch.distributed)."""
    if not distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend(group) == "nccl":
        t = t.cuda()
    dist.all_reduce(t, group=group)
    return [float(x) for x in t.cpu()]


def broadcast_int(value: int) -> int:
    """Rank 0's value on every rank."""
    if not distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return int(t.item())


def broadcast_object(obj):
    """Rank 0's picklable object on every rank (rank 0's own memory, never a file: other ranks may not share
    its disk)."""
    if not distributed() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=torch.device("cuda") if dist.get_backend() == "nccl" else None)
    return box[0]


def barrier() -> None:
    if distributed() and dist.get_world_size() > 1:
        dist.barrier()


class Log:
    """print (and Dagster Pipes log) on rank 0 only."""

    def __init__(self, pipes=None):
        self.rank = rank()
        self.pipes = pipes

    def __call__(self, msg: str) -> None:
        if self.rank != 0:
            return
        print(msg, flush=True)
        if self.pipes is not None:
            try:
                self.pipes.log.info(msg)
            except Exception:  # noqa: BLE001 - logging must never fail training
                pass


def open_pipes():
    """Only rank 0 opens the Dagster Pipes context (every rank opening it fails the run)."""
    if rank() != 0 or "DAGSTER_PIPES_CONTEXT" not in os.environ:
        return None
    from dagster_pipes import open_dagster_pipes

    return open_dagster_pipes()
