"""MM-SP sharding of the LongVILA VLM: stage 1 (frames over the SP group) and stage 2 (tokens, zigzag).

Batch format (a dict; what :class:`training.model.smoke_data.SmokeBatchSource` and the processor produce)::

    input_ids       LongTensor [B, S]   image placeholders already expanded: tokens_per_frame copies of
                                        config.image_token_id per frame
    labels          LongTensor [B, S]   UNshifted targets (HF convention), -100 = not supervised
    segment_ids     LongTensor [B, S]   optional; packed rows: id >= 0 per sample, -1 = padding
    position_ids    LongTensor [B, S]   optional; default: restart at 0 for every packed sample
    attention_mask  LongTensor [B, S]   optional; used (1 real / 0 padding) when segment_ids is absent
    pixel_values    Tensor [N, 3, H, W] optional; all frames of the batch, in the order their image-token
                                        blocks appear in input_ids (row-major)
    frames_per_sample LongTensor        optional, informational only

Every rank of an SP group receives the SAME batch (data parallelism chooses the batch per SP group).

Stage 1: the N frames are split into contiguous, balanced blocks over the SP ranks (:func:`frame_split`:
the first ``N % P`` ranks get one frame more; ranks may get none). Each rank runs the vision tower and the
projector on its own frames only; the visual embeddings are all-gathered with a differentiable gather whose
backward sums the incoming gradients over the group and routes each frame's gradient to its owner.

Stage 2: the sequence is padded to ``layout.padded_length(S)`` (a multiple of 2 x SP), labels are shifted
BEFORE sharding (so every rank's local next-token targets are right, also at shard borders; a packed
sample's last token gets -100), positions restart per packed sample and are sharded with the tokens
(global positions), and every per-token tensor is sharded with ``layout.shard`` (zigzag). Each rank embeds
only its own tokens and fills its image-token rows from the gathered visual embeddings. The LLM runs with
the registered ``mmsp`` attention (Ulysses / zigzag ring / 2D) reading the local segment ids.

Loss: ``sum of local token losses / N_sp`` with ``N_sp`` = the supervised tokens of the whole SP group's
batch (all-reduced over the SP group). The returned loss tensor's VALUE is the full batch loss on every rank,
its GRADIENT is the local part; so after ``backward()`` every rank holds a partial gradient and
:func:`sync_gradients` sums them over the SP group. Data parallelism: with ``count_over="sp"`` (default)
each SP group contributes the mean over its own batch and :func:`sync_gradients` (``dp_reduce="mean"``)
averages over DP replicas (= DDP semantics); with ``count_over="world"`` the count is all-reduced over
all ranks and ``dp_reduce="sum"`` gives the exact token-weighted mean over the global batch.

With SP size 1 (``groups`` None or sp_size 1) everything is the plain single-process model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.model.modeling import IGNORE_INDEX, positions_from_segments, shift_labels

from .attention import layout_scheme, register_mmsp_attention, resolve_mode, sp_batch_context
from .groups import SPGroups
from .layout import pad_to, padded_length, shard, shard_positions, unshard

MMSP_ATTENTION = "mmsp"


def _sp_active(groups: SPGroups | None) -> bool:
    return groups is not None and groups.sp_size > 1


# --------------------------------------------------------------------------- batch normalisation
def batch_segments(batch: dict[str, Any]) -> torch.Tensor:
    """segment ids [B, S] of a batch: given ones, else from attention_mask (0 real / -1 pad), else zeros."""
    ids = batch["input_ids"]
    if batch.get("segment_ids") is not None:
        return batch["segment_ids"].to(device=ids.device, dtype=torch.long)
    if batch.get("attention_mask") is not None:
        am = batch["attention_mask"].to(device=ids.device)
        return torch.where(am.bool(), 0, -1).long()
    return torch.zeros_like(ids, dtype=torch.long)


def _is_packed(seg: torch.Tensor) -> bool:
    """More than one real segment in some row (needs a block-diagonal mask)."""
    real = seg >= 0
    if not bool(real.any()):
        return False
    big, small = torch.iinfo(torch.long).max, torch.iinfo(torch.long).min
    mx = torch.where(real, seg, small).max(dim=1).values
    mn = torch.where(real, seg, big).min(dim=1).values
    has = real.any(dim=1)
    return bool(((mx != mn) & has).any())


# --------------------------------------------------------------------------- stage 1: frames
def frame_split(num_frames: int, sp_size: int) -> list[tuple[int, int]]:
    """(start, count) of the contiguous frame block owned by each SP rank; balanced, deterministic."""
    base, extra = divmod(int(num_frames), int(sp_size))
    out, start = [], 0
    for r in range(sp_size):
        n = base + (1 if r < extra else 0)
        out.append((start, n))
        start += n
    return out


class _GatherFrames(torch.autograd.Function):
    """All-gather per-rank frame embeddings of uneven counts into [N, T, D] (SP-rank order).

    Forward: pad each rank's block to the largest count, ``all_gather``, drop the padding.
    Backward: the gradient of the gathered tensor differs per rank (each rank's loss covers other tokens),
    so the adjoint is a SUM over the group of each owner's rows: ``reduce_scatter_single`` (formerly
    ``reduce_scatter_tensor``) on the padded
    blocks (gloo in torch >= 2.x and NCCL both have it), falling back to ``all_reduce`` + slice.
    ``torch.distributed.nn.functional.all_gather`` has the same adjoint but needs equal sizes on every
    rank and is deprecated, hence this Function."""

    @staticmethod
    def forward(ctx, local, counts, rank, group):
        ctx.counts, ctx.rank, ctx.group = counts, rank, group
        m = max(counts)
        n = local.shape[0]
        padded = local.new_zeros((m,) + tuple(local.shape[1:]))
        if n:
            padded[:n] = local
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)

    @staticmethod
    def backward(ctx, g):
        counts, rank, group = ctx.counts, ctx.rank, ctx.group
        m = max(counts)
        g = g.contiguous()
        blocks = g.new_zeros((len(counts) * m,) + tuple(g.shape[1:]))
        off = 0
        for r, c in enumerate(counts):
            blocks[r * m:r * m + c] = g[off:off + c]
            off += c
        out = g.new_empty((m,) + tuple(g.shape[1:]))
        rs = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # newer name first
        try:
            rs(out, blocks, group=group)
        except (RuntimeError, NotImplementedError, ValueError):  # backend without reduce_scatter
            dist.all_reduce(blocks, group=group)
            out = blocks[rank * m:(rank + 1) * m]
        return out[: counts[rank]].contiguous(), None, None, None


def encode_frames(model, pixel_values: torch.Tensor | None, groups: SPGroups | None) -> torch.Tensor | None:
    """Stage 1: visual embeddings [N, T, D] of all frames; each SP rank encodes only its own frames."""
    if pixel_values is None or pixel_values.shape[0] == 0:
        return None
    if not _sp_active(groups):
        return model.get_image_features(pixel_values)
    counts = [c for _, c in frame_split(pixel_values.shape[0], groups.sp_size)]
    start, n = frame_split(pixel_values.shape[0], groups.sp_size)[groups.sp_rank]
    if n:
        local = model.get_image_features(pixel_values[start:start + n])
    else:
        cfg = model.config
        needs_grad = torch.is_grad_enabled() and any(
            p.requires_grad for p in list(model.vision_tower.parameters()) + list(model.mm_projector.parameters())
        )
        w = model.mm_projector.layers[1].weight
        local = torch.zeros(0, cfg.tokens_per_frame, cfg.text_config.hidden_size, dtype=w.dtype, device=w.device,
                            requires_grad=needs_grad)
    return _GatherFrames.apply(local, counts, groups.sp_rank, groups.sp_group)


# --------------------------------------------------------------------------- stage 2: tokens
@dataclass
class MMSPOutput:
    logits: torch.Tensor  # [B, S_local, V] local logits (S_local = padded_len / P), or [B, S, V] at SP 1
    labels: torch.Tensor  # shifted next-token targets aligned with logits (-100 = none)
    positions: torch.Tensor  # sequence index of each local token in the padded global sequence
    segment_ids: torch.Tensor  # local segment ids (-1 padding)
    seq_len: int  # unpadded global length S
    padded_len: int


@contextlib.contextmanager
def _llm_attention(model, name: str) -> Iterator[None]:
    """Route the LLM's attention layers (and mask creation) through ``name`` for the duration."""
    cfg = model.llm.config
    old = cfg._attn_implementation
    cfg._attn_implementation = name
    try:
        yield
    finally:
        cfg._attn_implementation = old


def enable_mmsp_attention(model) -> None:
    """Permanently switch the LLM to the ``mmsp`` attention (e.g. for gradient checkpointing, whose
    recomputation runs outside :func:`mmsp_forward`); at SP size 1 it is exact local attention."""
    register_mmsp_attention(MMSP_ATTENTION)
    model.llm.config._attn_implementation = MMSP_ATTENTION


def mmsp_forward(
    model, batch: dict[str, Any], groups: SPGroups | None, *, mode: str = "auto"
) -> MMSPOutput:
    """Run the model on this rank's part of the batch (stage 1 + stage 2). See module doc."""
    input_ids = batch["input_ids"]
    device = model.get_input_embeddings().weight.device
    input_ids = input_ids.to(device)
    B, S = input_ids.shape
    seg = batch_segments(batch).to(device)
    labels = batch.get("labels")
    labels = torch.full_like(input_ids, IGNORE_INDEX) if labels is None else labels.to(device)
    pixel_values = batch.get("pixel_values")
    if pixel_values is not None:
        pixel_values = pixel_values.to(device)

    feats = encode_frames(model, pixel_values, groups)
    image_id = model.config.image_token_id

    if not _sp_active(groups):
        # plain model: 2-D padding mask, or a block-diagonal mask for packed rows
        shifted = shift_labels(labels, seg)
        embeds = model.merge_embeddings(input_ids, feats)
        if _is_packed(seg):
            from training.model.modeling import packed_causal_mask

            attn = packed_causal_mask(seg, embeds.dtype)
        else:
            attn = (seg >= 0).long()
        pos_ids = batch.get("position_ids")
        pos_ids = positions_from_segments(seg) if pos_ids is None else pos_ids.to(device)
        out = model.llm(inputs_embeds=embeds, attention_mask=attn, position_ids=pos_ids, use_cache=False)
        pos = torch.arange(S, device=device).expand(B, S)
        return MMSPOutput(out.logits, shifted, pos, seg, S, S)

    mode = resolve_mode(mode, groups)
    scheme = layout_scheme(mode)
    L = padded_length(S, groups)
    ids = pad_to(input_ids, 1, L, 0)
    seg_p = pad_to(seg, 1, L, -1)
    shifted = shift_labels(pad_to(labels, 1, L, IGNORE_INDEX), seg_p)
    given_pos = batch.get("position_ids")
    pos_ids = positions_from_segments(seg_p) if given_pos is None else pad_to(given_pos.to(device), 1, L, 0)
    img_mask = ids == image_id
    n_img = int(img_mask.sum())
    n_feat = 0 if feats is None else feats.shape[0] * feats.shape[1]
    if n_img != n_feat:
        raise ValueError(f"input_ids hold {n_img} image tokens but the frames give {n_feat} visual embeddings")
    img_index = (img_mask.reshape(-1).long().cumsum(0) - 1).reshape(B, L)

    def sh(x):
        return shard(x, 1, groups, scheme=scheme)

    l_ids, l_mask, l_idx = sh(ids), sh(img_mask), sh(img_index)
    l_seg, l_lab, l_pos = sh(seg_p), sh(shifted), sh(pos_ids)
    embeds = model.get_input_embeddings()(l_ids)
    if feats is not None:
        flat = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
        rows = flat.index_select(0, l_idx[l_mask])  # always in the graph (even if empty): keeps backward collective
        embeds = embeds.masked_scatter(l_mask.unsqueeze(-1).expand_as(embeds), rows)
    register_mmsp_attention(MMSP_ATTENTION)
    with _llm_attention(model, MMSP_ATTENTION), sp_batch_context(l_seg, groups=groups, mode=mode):
        out = model.llm(inputs_embeds=embeds, attention_mask=None, position_ids=l_pos, use_cache=False)
    seq_index = shard_positions(L, groups, scheme=scheme, device=device).expand(B, -1)
    return MMSPOutput(out.logits, l_lab, seq_index, l_seg, S, L)


def mmsp_loss(
    model, batch: dict[str, Any], groups: SPGroups | None, *, mode: str = "auto", count_over: str = "sp",
    backward: bool = False,
) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy of the batch under MM-SP. Returns ``(loss, num_supervised_tokens_global)``.

    ``loss`` has the full batch loss as its value on every rank and the local part as its gradient (see
    module doc); call :func:`sync_gradients` after ``backward``. ``backward=True`` runs the backward pass
    inside the attention context (needed when the LLM uses gradient checkpointing)."""
    if count_over not in ("sp", "world"):
        raise ValueError("count_over must be 'sp' or 'world'")
    register_mmsp_attention(MMSP_ATTENTION)
    sp = _sp_active(groups)
    scheme_mode = resolve_mode(mode, groups) if sp else mode
    out = mmsp_forward(model, batch, groups, mode=mode)
    logits = out.logits if out.logits.dtype == torch.float64 else out.logits.float()
    lab = out.labels.to(logits.device)
    local_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = (lab != IGNORE_INDEX).sum().to(torch.float64)
    group = None
    if count_over == "world" and dist.is_available() and dist.is_initialized():
        group = dist.group.WORLD
    elif sp:
        group = groups.sp_group
    if group is not None:
        count = count.clone()
        dist.all_reduce(count, group=group)
    n_global = int(count.item())
    loss_local = local_sum / max(n_global, 1)
    value = loss_local.detach().clone()
    if group is not None:
        dist.all_reduce(value, group=group)
    loss = value + (loss_local - loss_local.detach())  # value: the reduced loss exactly; grad: the local part
    if backward:
        if sp:
            with _llm_attention(model, MMSP_ATTENTION), sp_batch_context(out.segment_ids, groups=groups,
                                                                            mode=scheme_mode):
                loss.backward()
        else:
            loss.backward()
    return loss, n_global


def mmsp_logits(model, batch: dict[str, Any], groups: SPGroups | None, *, mode: str = "auto", gather: bool = True):
    """Inference/eval forward under MM-SP.

    ``gather=True``: the full logits [B, S, V] (unsharded, padding removed) on every rank.
    ``gather=False``: ``(local_logits [B, S_local, V], positions [B, S_local])`` with each local token's index
    in the padded global sequence (indices >= S are padding)."""
    out = mmsp_forward(model, batch, groups, mode=mode)
    if not gather:
        return out.logits, out.positions
    if not _sp_active(groups):
        return out.logits
    scheme = layout_scheme(resolve_mode(mode, groups))
    full = unshard(out.logits, 1, groups, scheme=scheme)
    return full[:, : out.seq_len]


# --------------------------------------------------------------------------- gradients
def sync_gradients(model_or_params, groups: SPGroups | None, *, dp_reduce: str = "mean",
                   bucket_elems: int = 1 << 24) -> None:
    """THE gradient reduction of replicated training: sum the partial gradients over the SP group and
    reduce over data-parallel replicas: ``"sum"`` when the loss is already normalised by the global token
    count (``count_over="world"``, what the trainer does; the FSDP path reduce-scatters the same sums),
    ``"mean"`` for ``count_over="sp"`` (each SP group's own mean: DDP semantics).

    ``model_or_params``: a module (its parameters that require grad) or a list of parameters. A
    parameter that got no gradient on this rank (e.g. the vision tower on a rank without frames) takes
    part with zeros. One flattened all-reduce per bucket (per dtype and device) over all ranks of the
    world, SP x DP; a no-op without torch.distributed or at world size 1."""
    if dp_reduce not in ("mean", "sum"):
        raise ValueError("dp_reduce must be 'mean' or 'sum'")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    world = dist.get_world_size()
    dp_size = groups.dp_size if groups is not None else world
    scale = 1.0 / dp_size if dp_reduce == "mean" and dp_size > 1 else None
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for plist in by_kind.values():
        start, size = 0, 0
        for i, p in enumerate(plist):
            size += p.numel()
            if size >= bucket_elems or i == len(plist) - 1:
                _allreduce_bucket(plist[start:i + 1], scale)
                start, size = i + 1, 0


def _allreduce_bucket(bucket: list[torch.Tensor], scale: float | None) -> None:
    flat = torch.cat([q.grad.reshape(-1) for q in bucket])
    dist.all_reduce(flat)
    if scale is not None:
        flat.mul_(scale)
    off = 0
    for q in bucket:
        n = q.numel()
        q.grad.copy_(flat[off:off + n].view_as(q.grad))
        off += n


__all__ = [
    "MMSPOutput",
    "batch_segments",
    "enable_mmsp_attention",
    "encode_frames",
    "frame_split",
    "mmsp_forward",
    "mmsp_logits",
    "mmsp_loss",
    "sync_gradients",
]
