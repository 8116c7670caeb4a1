"""Ulysses (DeepSpeed-style) head <-> sequence all-to-all for MM-SP.

Before attention, an all-to-all inside the Ulysses group turns [B, H, S_local, D] (all heads, this rank's
tokens) into [B, H/U, U*S_local, D] (a head subset, the tokens of the whole Ulysses group); after attention
the inverse all-to-all restores the layout. Query heads must be divisible by the Ulysses degree. K/V heads
(GQA) are split the same way when divisible; otherwise each K/V head is replicated by the smallest factor
``f`` (a divisor of Hq/Hkv) that makes ``f * Hkv`` divisible by ``U`` -- the replication keeps the query ->
K/V head mapping of ``repeat_kv`` (query head j uses K/V head j // (Hq/Hkv)), and its gradient is summed back
by autograd.
"""

from __future__ import annotations

import torch

from .comm import group_size, heads_to_seq, seq_to_heads


def kv_replication_factor(num_q_heads: int, num_kv_heads: int, ulysses_degree: int) -> int:
    """Smallest f with (f * Hkv) % U == 0 and f | (Hq / Hkv)."""
    if num_q_heads % ulysses_degree:
        raise ValueError(
            f"Ulysses degree {ulysses_degree} must divide the number of query heads {num_q_heads} "
            "(choose a smaller ulysses_degree and a larger ring_degree)"
        )
    if num_q_heads % num_kv_heads:
        raise ValueError(f"query heads {num_q_heads} must be a multiple of key/value heads {num_kv_heads}")
    n_rep = num_q_heads // num_kv_heads
    for f in range(1, n_rep + 1):
        if n_rep % f == 0 and (f * num_kv_heads) % ulysses_degree == 0:
            return f
    raise AssertionError("unreachable: f = n_rep always works when U divides Hq")


def ulysses_scatter_heads(q, k, v, group):
    """All-to-all q/k/v into the head-subset / gathered-sequence layout. Returns (q, k, v)."""
    U = group_size(group)
    Hq, Hkv = q.shape[1], k.shape[1]
    f = kv_replication_factor(Hq, Hkv, U)
    if f > 1:
        k = k.repeat_interleave(f, dim=1)
        v = v.repeat_interleave(f, dim=1)
    q, k, v = seq_to_heads(q, group), seq_to_heads(k, group), seq_to_heads(v, group)
    return q, k, v


def ulysses_gather_heads(out: torch.Tensor, group) -> torch.Tensor:
    """Inverse all-to-all of the attention output back to [B, H, S_local, D]."""
    return heads_to_seq(out, group)
