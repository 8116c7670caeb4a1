"""Process groups for multi-modal sequence parallelism (MM-SP).

Rank layout (world = dp * ulysses * ring, ``P = ulysses * ring`` = SP degree)::

    global rank = dp_rank * P + ring_rank * U + ulysses_rank
    sp_rank     = ring_rank * U + ulysses_rank          (rank inside its SP group)

* Ulysses groups are ``U`` *consecutive* ranks. With node ``n`` holding ranks ``n*L .. n*L+L-1`` (``L``
  processes per node, static rendezvous: training.multinode) they sit inside a node, and their all-to-alls
  use the fast intra-node links, exactly when ``U`` divides ``L``; `check_ulysses_within_node` enforces it
  (under torchrun or Ray Train, ``L`` is ``LOCAL_WORLD_SIZE``).
* Ring groups are the ``R`` ranks with the same ``dp_rank`` and ``ulysses_rank``: they stride by ``U`` and so
  cross nodes (ring P2P traffic overlaps with compute and tolerates the slower links).
* SP groups are ``P`` consecutive ranks; data parallelism runs across SP groups: the DP group of a rank is
  all ranks with the same ``sp_rank``.

Every group object is a real ``torch.distributed`` ProcessGroup whenever ``torch.distributed`` is
initialised (also for groups of size 1). When it is not initialised (a plain single process),
:func:`init_sp_groups` accepts only ``ulysses_degree == ring_degree == 1`` and all group fields are ``None``;
all collectives in :mod:`training.sp` treat a ``None`` group as "size 1, nothing to communicate".

The backend is whatever ``torch.distributed`` was initialised with (gloo on CPU, nccl on GPU); nothing
here is device-specific.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist


@dataclass
class SPGroups:
    world_size: int
    rank: int
    sp_size: int
    ulysses_size: int
    ring_size: int
    dp_size: int
    dp_rank: int
    sp_rank: int
    ulysses_rank: int
    ring_rank: int
    sp_group: Any = None
    ulysses_group: Any = None
    ring_group: Any = None
    dp_group: Any = None

    def ranks(self) -> dict[str, list[int]]:
        """Global ranks of this rank's groups (by the documented formula; no communication)."""
        return group_ranks(self.world_size, self.ulysses_size, self.ring_size, self.rank)

    def __repr__(self) -> str:  # the ProcessGroup objects print badly
        return (
            f"SPGroups(rank={self.rank}/{self.world_size}, sp={self.sp_rank}/{self.sp_size}, "
            f"ulysses={self.ulysses_rank}/{self.ulysses_size}, ring={self.ring_rank}/{self.ring_size}, "
            f"dp={self.dp_rank}/{self.dp_size})"
        )


def _check_degrees(world_size: int, ulysses_degree: int, ring_degree: int) -> int:
    if ulysses_degree < 1 or ring_degree < 1:
        raise ValueError(f"ulysses_degree and ring_degree must be >= 1, got {ulysses_degree}, {ring_degree}")
    sp = ulysses_degree * ring_degree
    if world_size % sp != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by the SP degree ulysses*ring = "
            f"{ulysses_degree}*{ring_degree} = {sp}"
        )
    return world_size // sp


def check_ulysses_within_node(ulysses_degree: int, procs_per_node: int) -> None:
    """Raise ValueError unless every Ulysses group lies inside one node (``U`` divides the processes per node)."""
    if procs_per_node < 1 or procs_per_node % ulysses_degree != 0:
        raise ValueError(
            f"Ulysses degree {ulysses_degree} does not divide the {procs_per_node} processes per node: its "
            "all-to-all groups would cross nodes. Use a Ulysses degree that divides the processes per node "
            "(and the ring degree across nodes)"
        )


def _local_world_size() -> int | None:
    value = os.environ.get("LOCAL_WORLD_SIZE")
    return int(value) if value and value.isdigit() else None


def group_ranks(world_size: int, ulysses_degree: int, ring_degree: int, rank: int) -> dict[str, list[int]]:
    """The global ranks in each group of ``rank`` (pure function of the layout above)."""
    dp = _check_degrees(world_size, ulysses_degree, ring_degree)
    U, R = ulysses_degree, ring_degree
    P = U * R
    dp_rank, sp_rank = divmod(rank, P)
    ring_rank, ulysses_rank = divmod(sp_rank, U)
    base = dp_rank * P
    return {
        "sp": [base + i for i in range(P)],
        "ulysses": [base + ring_rank * U + u for u in range(U)],
        "ring": [base + r * U + ulysses_rank for r in range(R)],
        "dp": [d * P + sp_rank for d in range(dp)],
    }


def init_sp_groups(ulysses_degree: int, ring_degree: int) -> SPGroups:
    """Create (collectively, on every rank) the SP / Ulysses / ring / DP groups and return this rank's view.

    Must be called by all ranks in the same order (``new_group`` is collective). Does not call
    :func:`set_sp_groups`; do that yourself if the registered attention should pick the groups up.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if ulysses_degree * ring_degree != 1:
            raise RuntimeError(
                f"init_sp_groups(ulysses={ulysses_degree}, ring={ring_degree}) needs torch.distributed to be "
                "initialised (e.g. run under torchrun); only 1x1 works in a plain process"
            )
        return SPGroups(1, 0, 1, 1, 1, 1, 0, 0, 0, 0)
    world, rank = dist.get_world_size(), dist.get_rank()
    dp = _check_degrees(world, ulysses_degree, ring_degree)
    local_world = _local_world_size()
    if local_world is not None and local_world < world:  # several nodes
        check_ulysses_within_node(ulysses_degree, local_world)
    U, R = ulysses_degree, ring_degree
    P = U * R
    mine = group_ranks(world, U, R, rank)
    found: dict[str, Any] = {}
    # every rank creates every group, in the same order
    for d in range(dp):
        ranks = [d * P + i for i in range(P)]
        g = dist.new_group(ranks)
        if ranks == mine["sp"]:
            found["sp"] = g
    for d in range(dp):
        for r in range(R):
            ranks = [d * P + r * U + u for u in range(U)]
            g = dist.new_group(ranks)
            if ranks == mine["ulysses"]:
                found["ulysses"] = g
    for d in range(dp):
        for u in range(U):
            ranks = [d * P + r * U + u for r in range(R)]
            g = dist.new_group(ranks)
            if ranks == mine["ring"]:
                found["ring"] = g
    for s in range(P):
        ranks = [d * P + s for d in range(dp)]
        g = dist.new_group(ranks)
        if ranks == mine["dp"]:
            found["dp"] = g
    dp_rank, sp_rank = divmod(rank, P)
    ring_rank, ulysses_rank = divmod(sp_rank, U)
    return SPGroups(
        world_size=world, rank=rank, sp_size=P, ulysses_size=U, ring_size=R, dp_size=dp,
        dp_rank=dp_rank, sp_rank=sp_rank, ulysses_rank=ulysses_rank, ring_rank=ring_rank,
        sp_group=found["sp"], ulysses_group=found["ulysses"], ring_group=found["ring"], dp_group=found["dp"],
    )


_CURRENT: SPGroups | None = None


def set_sp_groups(groups: SPGroups | None) -> None:
    """Install the process-wide SP groups read by the registered ``mmsp`` attention (None = no SP)."""
    global _CURRENT
    _CURRENT = groups


def get_sp_groups() -> SPGroups | None:
    return _CURRENT
