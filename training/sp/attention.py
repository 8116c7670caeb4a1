"""MM-SP attention: Ulysses, plain ring, zigzag ring and 2D (Ulysses x zigzag ring), plus the
``transformers`` attention-interface registration.

``sp_attention`` takes q/k/v in this rank's *local layout* (see :mod:`training.sp.layout`) and returns the
attention output in the same layout. Algorithm (one code path for every mode):

1. Ulysses all-to-all inside the Ulysses group (heads scattered, sequence gathered), then the fixed local
   permutation :func:`~training.sp.layout.ulysses_to_ring_order`: every rank of a ring group now holds a
   head subset and the ring-level chunks of its ring rank (zigzag: chunks r and 2R-1-r);
2. ring attention over the ring group (:mod:`training.sp.ring`; a ring of size 1 is local attention);
3. inverse permutation and inverse all-to-all.

Modes: ``"ulysses"`` (needs ring size 1), ``"zigzag_ring"`` (needs Ulysses size 1), ``"ring"`` (plain ring on
the *contiguous* layout: shard with ``scheme="contiguous"``; unbalanced, kept as a baseline), ``"2d"`` (any
U x R, zigzag), ``"auto"`` (ulysses if R == 1, zigzag_ring if U == 1, else 2d).

Masking: causal (global positions) AND, when ``segment_ids`` is given, same segment id; tokens whose id is
negative (padding, use -1) attend nothing, are attended by nobody, and get output 0 (and zero gradients).
No mask tensor exists: documents become per-block position ranges (:mod:`training.sp.docs`) computed by the
fused kernels of :mod:`training.kernels`; memory is O(S) on every device.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Iterator

import torch

from .groups import SPGroups, get_sp_groups
from .layout import ring_chunks, ring_to_ulysses_order, ulysses_to_ring_order, unshard
from .ring import RingSpec, ring_attention
from .ulysses import ulysses_gather_heads, ulysses_scatter_heads

MODES = ("auto", "ulysses", "ring", "zigzag_ring", "2d")


def layout_scheme(mode: str) -> str:
    """The layout scheme that ``mode`` expects the local shards to be in."""
    if mode not in MODES:
        raise ValueError(f"unknown MM-SP attention mode {mode!r}; expected one of {MODES}")
    return "contiguous" if mode == "ring" else "zigzag"


def resolve_mode(mode: str, groups: SPGroups | None) -> str:
    layout_scheme(mode)
    U = 1 if groups is None else groups.ulysses_size
    R = 1 if groups is None else groups.ring_size
    if mode == "auto":
        return "ulysses" if R == 1 else ("zigzag_ring" if U == 1 else "2d")
    if mode == "ulysses" and R != 1:
        raise ValueError(f"mode 'ulysses' needs ring size 1, groups have U={U} x R={R}; use '2d' or 'auto'")
    if mode in ("ring", "zigzag_ring") and U != 1:
        raise ValueError(f"mode {mode!r} needs Ulysses size 1, groups have U={U} x R={R}; use '2d' or 'auto'")
    return mode


def _merge_adjacent(chunks: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """[(global_start, len)] in local order -> [(local_off, len, global_start)], fusing runs that are contiguous
    both locally and globally (e.g. R=1 zigzag: the two halves are one chunk)."""
    out: list[list[int]] = []
    off = 0
    for g, n in chunks:
        if out and out[-1][2] + out[-1][1] == g:
            out[-1][1] += n
        else:
            out.append([off, n, g])
        off += n
    return [tuple(c) for c in out]


def _local_attention(q, k, v, *, causal, segment_ids, scale):
    """Single-process path: exactly the same kernels, one 'ring' of size 1."""
    S = q.shape[2]
    spec = RingSpec(group=None, chunks=[[(0, S, 0)]], causal=causal, scale=scale, segments=segment_ids)
    return ring_attention(q, k, v, spec)


def sp_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, groups: SPGroups | None, causal: bool = True,
    segment_ids: torch.Tensor | None = None, scale: float | None = None, mode: str = "auto",
    global_segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sequence-parallel attention on local shards.

    q [B, Hq, S_local, D]; k, v [B, Hkv, S_local, D] (Hq a multiple of Hkv); segment_ids [B, S_local] integer
    document ids (< 0 = padding) or None. Returns [B, Hq, S_local, D] in q's dtype and local layout.
    Differentiable (exact gradients) w.r.t. q, k, v. ``global_segment_ids`` ([B, L], global order) may be
    passed instead of gathering ``segment_ids`` again (the registered attention caches it per batch context).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"expected 4-D q/k/v [B, H, S, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"incompatible q/k/v shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]}")
    if segment_ids is not None:
        if segment_ids.shape != (q.shape[0], q.shape[2]):
            raise ValueError(
                f"segment_ids shape {tuple(segment_ids.shape)} != (batch, local seq) {(q.shape[0], q.shape[2])}")
        segment_ids = segment_ids.to(device=q.device, dtype=torch.long)
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if q.device.type == "meta":  # shape-only run (architecture validation without weights)
        return torch.empty_like(q)
    if groups is None or groups.sp_size == 1:
        layout_scheme(mode)
        return _local_attention(q, k, v, causal=causal, segment_ids=segment_ids, scale=scale)

    mode = resolve_mode(mode, groups)
    scheme = layout_scheme(mode)
    U, R, P = groups.ulysses_size, groups.ring_size, groups.sp_size
    S = q.shape[2]
    L = S * P
    if L % (2 * P):
        raise ValueError(
            f"local length {S} x SP size {P} = {L} is not a multiple of 2*SP size; pad with layout.padded_length()"
        )
    seg_global = None
    if global_segment_ids is not None:
        if global_segment_ids.shape != (q.shape[0], L):
            raise ValueError(f"global_segment_ids shape {tuple(global_segment_ids.shape)} != {(q.shape[0], L)}")
        seg_global = global_segment_ids.to(device=q.device, dtype=torch.long)
    elif segment_ids is not None:
        seg_global = unshard(segment_ids, 1, groups, scheme=scheme)
    n_chunks = 2 if scheme == "zigzag" else 1

    q2, k2, v2 = ulysses_scatter_heads(q, k, v, groups.ulysses_group)
    if U > 1:
        q2, k2, v2 = (ulysses_to_ring_order(t, 2, U, n_chunks) for t in (q2, k2, v2))
    chunks = [_merge_adjacent(ring_chunks(L, R, j, scheme)) for j in range(R)]
    spec = RingSpec(group=groups.ring_group if R > 1 else None, chunks=chunks, causal=causal, scale=scale,
                    segments=seg_global)
    out = ring_attention(q2, k2, v2, spec)
    if U > 1:
        out = ring_to_ulysses_order(out, 2, U, n_chunks)
    return ulysses_gather_heads(out, groups.ulysses_group)


# --------------------------------------------------------------------------- transformers integration
# Process-wide (not thread-local): autograd may run recomputation (activation checkpointing) on another
# thread. With activation checkpointing keep the context open across backward as well.
_STACK: list = []
_LOCK = threading.Lock()


def _ctx_stack() -> list:
    return _STACK


_UNSET: Any = object()
CALL_COUNT = {"mmsp": 0}  # number of mmsp_attention_forward calls in this process (tests check the path is used)


CONTEXT_KWARG = "mmsp_context"  # model-call keyword that carries a batch context down to every attention layer


def batch_context(
    segment_ids_local: torch.Tensor | None = None, *, groups: SPGroups | None = _UNSET, mode: str = "auto",
    causal: bool | None = None,
) -> dict:
    """A validated per-forward context for the ``mmsp`` attention function.

    segment_ids_local: [B, S_local] document ids of this rank's tokens (negative = padding), or None (one
    document per row; a 2-D ``attention_mask`` passed to the model is then used for padding).
    groups: SP groups to use (default: :func:`training.sp.groups.get_sp_groups`; ``None`` = no SP).
    mode: attention mode (see :func:`sp_attention`). causal: override the module's ``is_causal``.

    Pass it to a transformers model call as ``model(..., mmsp_context=ctx)``: the keyword reaches every
    attention layer, also when activation checkpointing recomputes a layer during backward.
    """
    if segment_ids_local is not None and segment_ids_local.dim() != 2:
        raise ValueError(f"segment_ids_local must be [batch, local_seq], got shape {tuple(segment_ids_local.shape)}")
    layout_scheme(mode)
    return {"segment_ids": segment_ids_local, "groups": groups, "mode": mode, "causal": causal}


@contextlib.contextmanager
def sp_batch_context(
    segment_ids_local: torch.Tensor | None = None, *, groups: SPGroups | None = _UNSET, mode: str = "auto",
    causal: bool | None = None,
) -> Iterator[dict]:
    """:func:`batch_context` made current process-wide (innermost wins) for model calls that do not pass it
    as a keyword. With activation checkpointing keep it open around the backward pass too."""
    entry = batch_context(segment_ids_local, groups=groups, mode=mode, causal=causal)
    with _LOCK:
        _STACK.append(entry)
    try:
        yield entry
    finally:
        with _LOCK:
            _STACK.remove(entry)


def current_batch_context() -> dict | None:
    stack = _ctx_stack()
    return stack[-1] if stack else None


def _reject_unsupported(dropout, kwargs) -> None:
    if dropout and dropout > 0:
        raise ValueError("mmsp attention does not implement attention dropout (set attention_dropout=0)")
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError(
            "mmsp attention does not implement sliding-window attention (use_sliding_window=False)")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("mmsp attention does not implement attention sinks")


def mmsp_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [B, Hq, S, D], key/value [B, Hkv, S_kv, D] ->
    (attn_output [B, S, Hq, D], None). Reads the batch context from the ``mmsp_context`` keyword, else from
    :func:`sp_batch_context`, else runs plain causal attention (2-D padding mask honoured)."""
    _reject_unsupported(dropout, kwargs)
    CALL_COUNT["mmsp"] += 1
    ctx = kwargs.get(CONTEXT_KWARG) or current_batch_context() or {}
    groups = ctx.get("groups", _UNSET)
    if groups is _UNSET:
        groups = get_sp_groups()
    mode = ctx.get("mode", "auto")
    causal = ctx.get("causal")
    if causal is None:
        causal = bool(getattr(module, "is_causal", True))
    sp_active = groups is not None and groups.sp_size > 1
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            "mmsp attention expects no mask or a 2-D padding mask (got a prepared "
            f"{attention_mask.dim()}-D mask); pass packing through sp_batch_context(segment_ids)"
        )
    if query.shape[2] != key.shape[2]:
        if sp_active or ctx.get("segment_ids") is not None:
            raise ValueError("mmsp attention supports a KV cache only without sequence parallelism and packing")
        return _cached_attention(query, key, value, attention_mask, scaling, causal), None
    seg = _local_segments(ctx.get("segment_ids"), attention_mask, query)
    seg_global = _global_segments(ctx, seg, attention_mask, groups, mode) if sp_active and seg is not None else None
    out = sp_attention(query, key, value, groups=groups if sp_active else None, causal=causal, segment_ids=seg,
                       scale=scaling, mode=mode, global_segment_ids=seg_global)
    return out.transpose(1, 2).contiguous(), None


_LAST_MASK: list = [None, -1, None, None]  # (mask, its version, segment ids, result): the layers of a forward share it


def _local_segments(seg, attention_mask, query):
    """Segment ids of the local tokens with the 2-D padding mask folded in (-1), made once per forward."""
    if attention_mask is None:
        return seg
    mask_ref, version, seg_ref, result = _LAST_MASK
    if mask_ref is attention_mask and version == attention_mask._version and seg_ref is seg \
            and result.device == query.device:
        return result
    pad = attention_mask.to(device=query.device, dtype=torch.bool)
    if pad.shape[-1] != query.shape[2]:
        raise ValueError(f"2-D attention mask length {pad.shape[-1]} != sequence length {query.shape[2]}")
    result = torch.where(pad, 0 if seg is None else seg.to(query.device), -1)
    _LAST_MASK[:] = [attention_mask, attention_mask._version, seg, result]
    return result


def _global_segments(ctx, seg, attention_mask, groups, mode):
    """All-gathered global segment ids, once per batch context (not once per layer)."""
    key = (id(ctx.get("segment_ids")), id(attention_mask), id(groups), mode)
    cached = ctx.get("_global_segments")
    if cached is not None and cached[0] == key:
        return cached[1]
    seg_global = unshard(seg.to(dtype=torch.long), 1, groups, scheme=layout_scheme(mode))
    if ctx:
        ctx["_global_segments"] = (key, seg_global)
    return seg_global


def _cached_attention(q, k, v, attention_mask, scale, causal):
    """Single-process decode/extend step: the queries are the last Sq of the Sk key positions (bottom-right
    aligned causality); a 2-D mask over the keys marks padding. Same planner and kernels, no mask tensor."""
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(D)
    seg = None
    if attention_mask is not None:
        seg = torch.where(attention_mask[:, -Sk:].to(torch.bool), 0, -1)
    spec = RingSpec(group=None, chunks=[[(0, Sk, 0)]], q_chunks=[(0, Sq, Sk - Sq)], causal=causal, scale=scale,
                    segments=seg)
    return ring_attention(q, k, v, spec).transpose(1, 2).contiguous()


def mmsp_mask(*args, attention_mask=None, **kwargs):
    """Mask function for ``AttentionMaskInterface``: never builds a dense mask; passes a 2-D padding mask
    through unchanged (or None). Causality and packing are applied inside the attention function."""
    if attention_mask is not None and attention_mask.dim() == 2:
        return attention_mask
    return None


def register_mmsp_attention(name: str = "mmsp") -> str:
    """Register the attention and mask functions with transformers under ``name`` and return ``name``.

    Then ``AutoModelForCausalLM.from_config(cfg, attn_implementation=name)`` (or
    ``model.set_attn_implementation(name)``) routes every attention layer through :func:`sp_attention`.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, mmsp_attention_forward)
    AttentionMaskInterface.register(name, mmsp_mask)
    return name
