"""Differentiable collectives and ring P2P helpers for MM-SP (device-agnostic: gloo on CPU, nccl on GPU).

A ``None`` group means "size 1": every function then returns its input unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


class _AllToAll(torch.autograd.Function):
    """Equal-split all_to_all along dim 0 (chunk i goes to rank i). It is its own adjoint."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        out = torch.empty_like(g)
        dist.all_to_all_single(out, g, group=ctx.group)
        return out, None


def all_to_all_dim0(x: torch.Tensor, group) -> torch.Tensor:
    """x [n, ...] with n == group size: returns y with y[i] = x[my_rank] of rank i. Differentiable."""
    if group_size(group) == 1:
        return x
    return _AllToAll.apply(x, group)


def seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """Ulysses forward all-to-all: [B, H, S, D] (all heads, local seq) -> [B, H/n, n*S, D] (head subset, the
    n local sequences concatenated in group-rank order). H must be divisible by n."""
    n = group_size(group)
    if n == 1:
        return x
    B, H, S, D = x.shape
    if H % n:
        raise ValueError(f"head count {H} is not divisible by the Ulysses degree {n}")
    y = x.reshape(B, n, H // n, S, D).transpose(0, 1)  # [n(dst), B, H/n, S, D]
    y = all_to_all_dim0(y, group)  # [n(src), B, H/n, S, D]
    return y.permute(1, 2, 0, 3, 4).reshape(B, H // n, n * S, D)


def heads_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    """Inverse of :func:`seq_to_heads`: [B, H/n, n*S, D] -> [B, H, S, D]."""
    n = group_size(group)
    if n == 1:
        return x
    B, h, nS, D = x.shape
    S = nS // n
    y = x.reshape(B, h, n, S, D).permute(2, 0, 1, 3, 4)  # [n(dst), B, h, S, D]
    y = all_to_all_dim0(y, group)  # [n(src), B, h, S, D]
    return y.transpose(0, 1).reshape(B, n * h, S, D)


class _AllGatherCat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group, reduce_grad):
        ctx.dim, ctx.group, ctx.reduce_grad = dim, group, reduce_grad
        n = dist.get_world_size(group)
        ctx.n, ctx.rank = n, dist.get_rank(group)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(n)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        if ctx.reduce_grad:
            dist.all_reduce(g, group=ctx.group)
        return g.chunk(ctx.n, dim=ctx.dim)[ctx.rank].contiguous(), None, None, None


def all_gather_cat(x: torch.Tensor, dim: int, group, *, reduce_grad: bool = False) -> torch.Tensor:
    """All-gather equal-shaped tensors and concatenate along ``dim`` in group-rank order.

    Backward: by default each rank keeps its own slice of the incoming gradient, which is exact when every
    rank computes the same function of the gathered tensor (tests, inference). With ``reduce_grad=True``
    the slices are summed over the group first (the adjoint when ranks compute different functions).
    Tensors without grad go through ``dist.all_gather`` directly.
    """
    if group_size(group) == 1:
        return x
    if not x.requires_grad:
        parts = [torch.empty_like(x.contiguous()) for _ in range(group_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)
    return _AllGatherCat.apply(x, dim, group, reduce_grad)


class RingExchange:
    """Non-blocking ``send to next / receive from previous`` over a ring group, with ``batch_isend_irecv``.

    ``start(tensors)`` posts one send + one receive per tensor (the receive buffers are new tensors of the
    same shape); ``wait()`` completes them and returns the received tensors.
    """

    def __init__(self, group):
        self.group = group
        n = group_size(group)
        r = group_rank(group)
        self.size = n
        self.next = dist.get_global_rank(group, (r + 1) % n) if n > 1 else None
        self.prev = dist.get_global_rank(group, (r - 1) % n) if n > 1 else None
        self._reqs = None
        self._recv = None

    def start(self, tensors: list[torch.Tensor], tag: int = 0) -> None:
        ops = []
        recv = []
        keep = []
        for i, t in enumerate(tensors):
            t = t.contiguous()
            keep.append(t)
            buf = torch.empty_like(t)
            ops.append(dist.P2POp(dist.isend, t, self.next, self.group, tag + i))
            ops.append(dist.P2POp(dist.irecv, buf, self.prev, self.group, tag + i))
            recv.append(buf)
        self._keep = keep  # the send buffers must stay alive until wait()
        self._reqs = dist.batch_isend_irecv(ops)
        self._recv = recv

    def wait(self) -> list[torch.Tensor]:
        for req in self._reqs:
            req.wait()
        out = self._recv
        self._reqs = self._recv = self._keep = None
        return out
