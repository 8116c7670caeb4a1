"""Ring attention (plain and zigzag) with exact, recompute-free backward, plus the per-block kernels.

Each rank of the ring group holds a query/key/value shard made of one or more *chunks*; a chunk is a run of
consecutive global positions (see :mod:`training.sp.layout`: zigzag = 2 chunks per rank, contiguous = 1).
K/V blocks travel around the ring (``batch_isend_irecv``; the transfer of the next block is posted before
the current block is computed, so it overlaps with compute). For every (query chunk, key chunk) pair the
causal relation is decided from the global position ranges:

* key chunk entirely after the query chunk  -> skipped (no work at all),
* key chunk entirely before the query chunk -> full block, no mask,
* same chunk                                  -> causal "diagonal" block,

so with the zigzag layout every rank does the same amount of work at every step (one diagonal pair at step
0, then exactly half of the chunk pairs), whereas with the contiguous layout rank 0 idles while the last rank
computes full blocks. Packed-sequence segment ids (and padding, id < 0) add an explicit mask to the blocks
that are not skipped.

Per-block partial results are merged with the online log-sum-exp rule in float32 (float64 for float64
inputs). The backward pass uses the final output and LSE (no re-run of the forward ring): dQ accumulates
locally; dK/dV accumulators travel around the ring with their K/V block (transfers again overlapped with the
block gradient computation) and end at their owner.

Block kernel: on CPU torch's flash kernel ``aten._scaled_dot_product_flash_attention_for_cpu`` (returns the
LSE; float32/float64/bfloat16; additive masks), elsewhere an exact matmul path (``set_block_kernel("math")``
forces it everywhere). Both are exact to rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .comm import RingExchange, group_rank, group_size

_KERNEL = "auto"


def set_block_kernel(name: str) -> None:
    """"auto" (flash on CPU, math elsewhere), "flash" or "math"."""
    global _KERNEL
    if name not in ("auto", "flash", "math"):
        raise ValueError(f"unknown block kernel {name!r}")
    _KERNEL = name


def get_block_kernel() -> str:
    return _KERNEL


def _use_flash(t: torch.Tensor) -> bool:
    if _KERNEL == "math":
        return False
    if _KERNEL == "flash":
        return True
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _expand(k: torch.Tensor, n_rep: int) -> torch.Tensor:
    return k if n_rep == 1 else k.repeat_interleave(n_rep, dim=1)


def _reduce(dk: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return dk
    B, H, S, D = dk.shape
    return dk.view(B, H // n_rep, n_rep, S, D).sum(2)


# ----------------------------------------------------------------------------------------------- kernels
def block_forward(q, k, v, scale: float, diag: bool, keep: torch.Tensor | None):
    """One attention block. q [B,H,Sq,D], k/v [B,H,Sk,D] (heads already matched).

    ``diag``: top-left aligned causal mask (only used when ``keep`` is None). ``keep``: bool [B,1|H,Sq,Sk]
    (True = attend), already including causality. Returns (out [B,H,Sq,D] in the accumulation dtype,
    lse [B,H,Sq] in the accumulation dtype; -inf for rows that attend nothing, whose out is 0).
    """
    acc = acc_dtype(q.dtype)
    if _use_flash(q):
        if keep is None:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, diag, scale=scale)
        else:
            add = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill_(~keep, float("-inf"))
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, False, attn_mask=add, scale=scale
            )
            empty = ~keep.any(-1)  # [B,1|H,Sq]
            if bool(empty.any()):
                lse = lse.masked_fill(empty, float("-inf"))
                out = out.masked_fill(empty.unsqueeze(-1), 0.0)
        return out.to(acc), lse.to(acc)
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    if keep is None and diag:
        Sq, Sk = s.shape[-2:]
        keep = torch.ones(Sq, Sk, dtype=torch.bool, device=s.device).tril()
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - safe.unsqueeze(-1))
    out = torch.matmul(p, v.to(acc))
    return out, lse


def block_backward(dout, q, k, v, out, lse, scale: float, diag: bool, keep: torch.Tensor | None):
    """Gradients of one block given the FINAL (merged) out and lse of these query rows.

    Returns dq, dk, dv in the accumulation dtype.
    """
    acc = acc_dtype(q.dtype)
    # rows that attend nothing anywhere have lse=-inf: +inf makes their probabilities exactly 0
    lse_b = lse.masked_fill(torch.isneginf(lse), float("inf"))
    if _use_flash(q):
        lse_k = lse_b.to(torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype)
        if keep is None:
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                dout, q, k, v, out, lse_k, 0.0, diag, scale=scale
            )
        else:
            add = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill_(~keep, float("-inf"))
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                dout, q, k, v, out, lse_k, 0.0, False, attn_mask=add, scale=scale
            )
        return dq.to(acc), dk.to(acc), dv.to(acc)
    qa, ka, va, da, oa = (t.to(acc) for t in (q, k, v, dout, out))
    s = torch.matmul(qa, ka.transpose(-1, -2)) * scale
    if keep is None and diag:
        Sq, Sk = s.shape[-2:]
        keep = torch.ones(Sq, Sk, dtype=torch.bool, device=s.device).tril()
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.exp(s - lse_b.to(acc).unsqueeze(-1))
    dv = torch.matmul(p.transpose(-1, -2), da)
    dp = torch.matmul(da, va.transpose(-1, -2))
    delta = (da * oa).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = torch.matmul(ds, ka) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qa) * scale
    return dq, dk, dv


def merge_(out_acc, lse_acc, out_blk, lse_blk) -> None:
    """In-place online log-sum-exp merge of a block result into the accumulators (slices allowed)."""
    new = torch.logaddexp(lse_acc, lse_blk)
    safe = torch.where(torch.isneginf(new), torch.zeros_like(new), new)
    w_old = torch.exp(lse_acc - safe).unsqueeze(-1)
    w_new = torch.exp(lse_blk - safe).unsqueeze(-1)
    out_acc.mul_(w_old).add_(out_blk * w_new)
    lse_acc.copy_(new)


# ----------------------------------------------------------------------------------------------- plan
@dataclass
class RingSpec:
    """Everything but the tensors: who holds which global positions, masks, scaling."""

    group: Any  # ring ProcessGroup or None
    chunks: list[list[tuple[int, int, int]]]  # per ring rank: [(local_offset, length, global_start), ...]
    causal: bool
    scale: float
    n_rep: int  # query heads per K/V head (GQA) on this rank
    segments: torch.Tensor | None = None  # [B, L] global segment ids (-1 = padding), or None
    stats: dict = field(default_factory=dict)  # filled by forward: blocks computed/skipped (for tests/bench)


def _relation(qg: int, ql: int, kg: int, kl: int, causal: bool) -> str:
    if not causal:
        return "full"
    if kg + kl - 1 <= qg:
        return "full"
    if kg > qg + ql - 1:
        return "none"
    if kg == qg and kl == ql:
        return "diag"
    return "general"


def _plan(spec: RingSpec, my_rank: int, owner: int):
    """Blocks to compute when holding the K/V of ``owner``: list of (q_slice, k_slice, diag, keep)."""
    blocks = []
    for qoff, ql, qg in spec.chunks[my_rank]:
        groups: list[list] = []  # merge runs of adjacent full key chunks into one block
        for koff, kl, kg in spec.chunks[owner]:
            rel = _relation(qg, ql, kg, kl, spec.causal)
            if rel == "none":
                spec.stats["skipped"] = spec.stats.get("skipped", 0) + 1
                continue
            if rel == "full" and groups and groups[-1][0] == "full" and groups[-1][1][-1][0] + groups[-1][1][-1][1] == koff:
                groups[-1][1].append((koff, kl, kg))
            else:
                groups.append([rel, [(koff, kl, kg)]])
        for rel, kcs in groups:
            k0 = kcs[0][0]
            k1 = kcs[-1][0] + kcs[-1][1]
            keep = None
            if rel == "general":
                pq = torch.arange(qg, qg + ql)
                pk = torch.cat([torch.arange(g, g + n) for _, n, g in kcs])
                keep = (pk[None, :] <= pq[:, None])[None, None]
            if spec.segments is not None:
                sq = spec.segments[:, qg:qg + ql]
                sk = torch.cat([spec.segments[:, g:g + n] for _, n, g in kcs], dim=1)
                lo, hi = int(sq.min()), int(sq.max())
                uniform = lo == hi and lo >= 0 and int(sk.min()) == lo and int(sk.max()) == lo
                if not uniform:
                    seg_keep = ((sq[:, :, None] == sk[:, None, :]) & (sq >= 0)[:, :, None])[:, None]
                    if rel == "diag":
                        seg_keep = seg_keep & torch.ones(ql, k1 - k0, dtype=torch.bool, device=sq.device).tril()
                    keep = seg_keep if keep is None else (keep.to(seg_keep.device) & seg_keep)
            spec.stats["computed"] = spec.stats.get("computed", 0) + 1
            klen = k1 - k0
            area = ql * (ql + 1) // 2 if rel == "diag" else ql * klen
            spec.stats["work"] = spec.stats.get("work", 0) + area
            blocks.append((slice(qoff, qoff + ql), slice(k0, k1), rel == "diag", keep))
    return blocks


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


# forward block statistics of the last ring call in this process: "computed"/"skipped" block pairs and
# "work" = number of (query, key) score entries evaluated (a diagonal block counts its lower triangle)
LAST_FORWARD_STATS: dict = {}


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec: RingSpec):
        R = group_size(spec.group)
        r = group_rank(spec.group)
        acc = acc_dtype(q.dtype)
        B, H, S, D = q.shape
        out = torch.zeros(B, H, S, D, dtype=acc, device=q.device)
        lse = torch.full((B, H, S), float("-inf"), dtype=acc, device=q.device)
        kv = torch.stack([k, v])
        ex = RingExchange(spec.group) if R > 1 else None
        for step in range(R):
            if step < R - 1:
                ex.start([kv])
            owner = (r - step) % R
            t0 = time.thread_time() if _STEP_TIMES is not None else 0.0
            kc, vc = _expand(kv[0], spec.n_rep), _expand(kv[1], spec.n_rep)
            for qs, ks, diag, keep in _plan(spec, r, owner):
                keep = None if keep is None else keep.to(q.device)
                o_b, l_b = block_forward(q[:, :, qs], kc[:, :, ks], vc[:, :, ks], spec.scale, diag, keep)
                merge_(out[:, :, qs], lse[:, :, qs], o_b, l_b)
            if _STEP_TIMES is not None:
                _STEP_TIMES.append(("fwd", step, time.thread_time() - t0))
            if step < R - 1:
                kv = ex.wait()[0]
        out_q = out.to(q.dtype)
        LAST_FORWARD_STATS.clear()
        LAST_FORWARD_STATS.update(spec.stats)
        ctx.spec = spec
        ctx.save_for_backward(q, k, v, out_q, lse)
        return out_q

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        spec: RingSpec = ctx.spec
        R = group_size(spec.group)
        r = group_rank(spec.group)
        acc = acc_dtype(q.dtype)
        dout = dout.contiguous()
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        kv = torch.stack([k, v])
        ex = RingExchange(spec.group) if R > 1 else None
        dkv_out = None
        for step in range(R):
            sends = []
            if step < R - 1:
                sends.append(kv)
            if step > 0:
                sends.append(dkv_out)
            if sends:
                ex.start(sends)
            owner = (r - step) % R
            t0 = time.thread_time() if _STEP_TIMES is not None else 0.0
            kc, vc = _expand(kv[0], spec.n_rep), _expand(kv[1], spec.n_rep)
            dk = torch.zeros(kc.shape, dtype=acc, device=q.device)
            dv = torch.zeros(vc.shape, dtype=acc, device=q.device)
            for qs, ks, diag, keep in _plan(spec, r, owner):
                keep = None if keep is None else keep.to(q.device)
                dq_b, dk_b, dv_b = block_backward(
                    dout[:, :, qs], q[:, :, qs], kc[:, :, ks], vc[:, :, ks], out[:, :, qs], lse[:, :, qs],
                    spec.scale, diag, keep,
                )
                dq[:, :, qs] += dq_b
                dk[:, :, ks] += dk_b
                dv[:, :, ks] += dv_b
            g = torch.stack([_reduce(dk, spec.n_rep), _reduce(dv, spec.n_rep)])
            if _STEP_TIMES is not None:
                _STEP_TIMES.append(("bwd", step, time.thread_time() - t0))
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
        return dq.to(q.dtype), dkv_out[0].to(k.dtype), dkv_out[1].to(v.dtype), None


def ring_attention(q, k, v, spec: RingSpec) -> torch.Tensor:
    """q [B,Hq,S,D], k/v [B,Hkv,S,D] with Hq = n_rep*Hkv, in the ring-level layout of ``spec.chunks``."""
    if q.shape[1] != k.shape[1] * spec.n_rep:
        raise ValueError(f"query heads {q.shape[1]} != n_rep {spec.n_rep} x key/value heads {k.shape[1]}")
    return _RingAttention.apply(q, k, v, spec)
