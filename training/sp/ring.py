"""Ring attention (plain and zigzag) with exact, recompute-free backward, on fused block kernels.

Each rank of the ring group holds a query/key/value shard made of one or more *chunks*; a chunk is a run of
consecutive global positions (see :mod:`training.sp.layout`: zigzag = 2 chunks per rank, contiguous = 1).
K/V blocks travel around the ring (``batch_isend_irecv``; the transfer of the next block is posted before
the current block is computed, so it overlaps with compute). What each step computes is planned from the
chunks' global position ranges and the documents of the row (:mod:`training.sp.docs`): K/V chunks after a
query chunk are skipped, chunks before it are full pieces, a chunk with itself is a square causal piece --
so with the zigzag layout every rank does the same work at every step -- and packed documents / padding
only shrink the pieces to document ranges (no mask tensor at all; memory O(S)).

Every piece set is one call of the fused kernel picked by :func:`training.kernels.select_kernel` (flash
attention on CUDA, torch's CPU flash op on CPU), which returns the block's log-sum-exp; partial results are
merged with the online log-sum-exp rule in float32 (float64 for float64 inputs). A query row that only one
call writes (every row at SP size 1) takes the kernel output as is. The backward pass uses the final output
and LSE (no re-run of the forward ring): dQ accumulates locally; dK/dV accumulators travel around the ring
with their K/V block (transfers overlapped with the block gradients) and end at their owner.

Tensors are processed token-major (``[B * S, H, D]``, the memory layout of transformers' q/k/v), so the
kernels read slices of the inputs without copies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from training.kernels import lse_dtype, select_kernel

from .comm import RingExchange, group_rank, group_size
from .docs import Chunk, cached_schedule


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return lse_dtype(dtype)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, H, S, D] -> token-major [B * S, H, D] (a view when x is a transposed [B, S, H, D])."""
    B, H, S, D = x.shape
    return x.transpose(1, 2).reshape(B * S, H, D)


def _heads(x: torch.Tensor, B: int) -> torch.Tensor:
    """Inverse of :func:`_tokens` (a view when x is contiguous)."""
    N, H, D = x.shape
    return x.reshape(B, N // B, H, D).transpose(1, 2)


def merge_(out_acc, lse_acc, out_blk, lse_blk) -> None:
    """In-place online log-sum-exp merge of block results ([n, H, D], [n, H]) into the accumulators."""
    new = torch.logaddexp(lse_acc, lse_blk)
    safe = torch.where(torch.isneginf(new), torch.zeros_like(new), new)
    out_acc.mul_(torch.exp(lse_acc - safe).unsqueeze(-1)).add_(out_blk * torch.exp(lse_blk - safe).unsqueeze(-1))
    lse_acc.copy_(new)


# ----------------------------------------------------------------------------------------------- plan
@dataclass
class RingSpec:
    """Everything but the tensors: who holds which global positions, documents, scaling.

    ``chunks[j]``: the K/V chunks ``(local_offset, length, global_start)`` of ring rank j; ``q_chunks``: this
    rank's query chunks when they differ from its K/V chunks (a KV-cache step: queries are the last tokens).
    ``segments``: [B, L] global segment ids (< 0 = padding) or None (one document per row)."""

    group: Any  # ring ProcessGroup or None
    chunks: list[list[tuple[int, int, int]]]
    causal: bool
    scale: float
    segments: torch.Tensor | None = None
    q_chunks: list[tuple[int, int, int]] | None = None
    stats: dict = field(default_factory=dict)  # forward: "work" and "skipped" (see docs.Schedule)

    def schedule(self, rank: int, batch: int, s_q: int, s_k: int):
        q_chunks = self.q_chunks if self.q_chunks is not None else self.chunks[rank]
        return cached_schedule(self.segments, [Chunk(*c) for c in q_chunks],
                               [[Chunk(*c) for c in cs] for cs in self.chunks], rank, self.causal, batch, s_q, s_k)


# Optional per-step compute timing (thread CPU time, so it measures work even on an oversubscribed machine):
# when enabled, every ring step appends (phase, step, seconds) -- used by bench/mmsp.py to compute the
# critical path a ring would have on dedicated cores.
_STEP_TIMES: list | None = None


def record_step_times(enabled: bool) -> None:
    global _STEP_TIMES
    _STEP_TIMES = [] if enabled else None


def pop_step_times() -> list:
    global _STEP_TIMES
    out = list(_STEP_TIMES or [])
    if _STEP_TIMES is not None:
        _STEP_TIMES = []
    return out


def _timed(phase: str, step: int, t0: float) -> None:
    if _STEP_TIMES is not None:
        _STEP_TIMES.append((phase, step, time.thread_time() - t0))


# forward statistics of the last ring call in this process (see docs.Schedule)
LAST_FORWARD_STATS: dict = {}


class _Output:
    """Attention output and LSE of the query rows, built from kernel calls (module doc)."""

    def __init__(self, n: int, like: torch.Tensor, calls: int):
        self.n, self.like, self.single = n, like, calls == 1
        self.out = self.lse = None

    def add(self, call, out_b: torch.Tensor, lse_b: torch.Tensor) -> None:
        if self.single and call.q_rows.covers(self.n):
            self.out, self.lse = out_b, lse_b
            return
        if self.out is None:
            dt = self.like.dtype if self.single else acc_dtype(self.like.dtype)
            self.out = self.like.new_zeros((self.n,) + out_b.shape[1:], dtype=dt)
            self.lse = self.like.new_full((self.n, out_b.shape[1]), float("-inf"), dtype=acc_dtype(self.like.dtype))
        if call.first:
            call.q_rows.put_(self.out, out_b)
            call.q_rows.put_(self.lse, lse_b)
            return
        rows = call.q_rows
        if rows.slice is not None:
            merge_(self.out[rows.slice], self.lse[rows.slice], out_b, lse_b)
            return
        o, l_ = rows.take(self.out), rows.take(self.lse)
        merge_(o, l_, out_b, lse_b)
        rows.put_(self.out, o)
        rows.put_(self.lse, l_)

    def result(self, heads: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.out is None:  # nothing attends anything (all padding)
            self.out = self.like.new_zeros((self.n, heads, dim))
            self.lse = self.like.new_full((self.n, heads), float("-inf"), dtype=acc_dtype(self.like.dtype))
        return self.out.to(self.like.dtype), self.lse


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec: RingSpec):
        R, r = group_size(spec.group), group_rank(spec.group)
        B, Hq, S, D = q.shape
        kernel = select_kernel(q.device, q.dtype, D)
        sched = spec.schedule(r, B, S, k.shape[2])
        qf, kf, vf = _tokens(q), _tokens(k), _tokens(v)
        kv = torch.stack([kf, vf]) if R > 1 else (kf, vf)  # the ring sends one tensor
        res = _Output(B * S, qf, sum(len(c) for c in sched.steps))
        ex = RingExchange(spec.group) if R > 1 else None
        for step in range(R):
            if step < R - 1:
                ex.start([kv])
            t0 = time.thread_time() if _STEP_TIMES is not None else 0.0
            for call in sched.steps[step]:
                out_b, lse_b = kernel.forward(call.q_rows.take(qf), call.k_rows.take(kv[0]),
                                              call.k_rows.take(kv[1]), call.layout, spec.scale)
                res.add(call, out_b, lse_b)
            _timed("fwd", step, t0)
            if step < R - 1:
                kv = ex.wait()[0]
        out, lse = res.result(Hq, D)
        spec.stats.update(work=sched.work, skipped=sched.skipped)
        LAST_FORWARD_STATS.clear()
        LAST_FORWARD_STATS.update(spec.stats)
        ctx.spec, ctx.kernel, ctx.sched, ctx.batch = spec, kernel, sched, B
        ctx.save_for_backward(qf, kf, vf, out, lse)
        return _heads(out, B)

    @staticmethod
    def backward(ctx, dout):
        qf, kf, vf, out, lse = ctx.saved_tensors
        spec, kernel, sched = ctx.spec, ctx.kernel, ctx.sched
        R = group_size(spec.group)
        do = _tokens(dout)
        calls = [c for step in sched.steps for c in step]
        if R == 1 and len(calls) == 1:
            grads = _single_call_backward(do, qf, kf, vf, out, lse, calls[0], kernel, spec.scale)
            return (*(_heads(g, ctx.batch) for g in grads), None)
        dq = torch.zeros(qf.shape, dtype=acc_dtype(qf.dtype), device=qf.device)
        kv = torch.stack([kf, vf]) if R > 1 else (kf, vf)
        dkv = _ring_backward(do, qf, kv, out, lse, dq, spec, kernel, sched)
        B = ctx.batch
        return (_heads(dq.to(qf.dtype), B), _heads(dkv[0].to(kf.dtype), B), _heads(dkv[1].to(vf.dtype), B), None)


def _single_call_backward(do, qf, kf, vf, out, lse, call, kernel, scale):
    """dQ, dK, dV when one kernel call saw everything (SP size 1): no float32 accumulators."""
    rows, krows = call.q_rows, call.k_rows
    dq_b, dk_b, dv_b = kernel.backward(rows.take(do), rows.take(qf), krows.take(kf), krows.take(vf), rows.take(out),
                                       rows.take(lse), call.layout, scale)
    if rows.covers(qf.shape[0]) and krows.covers(kf.shape[0]):
        return dq_b, dk_b, dv_b
    dq, dk, dv = torch.zeros_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)  # padding rows: zero
    rows.put_(dq, dq_b)
    krows.add_(dk, dk_b)
    krows.add_(dv, dv_b)
    return dq, dk, dv


def _block_grads(do, qf, kv, out, lse, dq, calls, kernel, scale) -> torch.Tensor:
    """Gradients of one step's calls: dQ added into ``dq``, returns this step's [2, Nk, Hkv, D] dK/dV."""
    dkv = torch.zeros((2,) + tuple(kv[0].shape), dtype=acc_dtype(kv[0].dtype), device=kv[0].device)
    for call in calls:
        rows, krows = call.q_rows, call.k_rows
        dq_b, dk_b, dv_b = kernel.backward(rows.take(do), rows.take(qf), krows.take(kv[0]), krows.take(kv[1]),
                                           rows.take(out), rows.take(lse), call.layout, scale)
        rows.add_(dq, dq_b)
        krows.add_(dkv[0], dk_b)
        krows.add_(dkv[1], dv_b)
    return dkv


def _ring_backward(do, qf, kv, out, lse, dq, spec, kernel, sched) -> torch.Tensor:
    """dK/dV accumulators travel with their K/V block and end at the owner (module doc)."""
    R = group_size(spec.group)
    ex = RingExchange(spec.group) if R > 1 else None
    dkv_out = None
    for step in range(R):
        sends = ([kv] if step < R - 1 else []) + ([dkv_out] if step > 0 else [])
        if sends:
            ex.start(sends)
        t0 = time.thread_time() if _STEP_TIMES is not None else 0.0
        g = _block_grads(do, qf, kv, out, lse, dq, sched.steps[step], kernel, spec.scale)
        _timed("bwd", step, t0)
        if sends:
            recv = ex.wait()
            if step < R - 1:
                kv = recv.pop(0)
            if step > 0:
                g += recv.pop(0)
        dkv_out = g
    if R > 1:  # the accumulator now belongs to rank r+1: one last hop home
        ex.start([dkv_out])
        dkv_out = ex.wait()[0]
    return dkv_out


def ring_attention(q, k, v, spec: RingSpec) -> torch.Tensor:
    """q [B,Hq,S,D], k/v [B,Hkv,Sk,D] (Hq a multiple of Hkv) in the ring-level layout of ``spec``."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]}")
    return _RingAttention.apply(q, k, v, spec)
