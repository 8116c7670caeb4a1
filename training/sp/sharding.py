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
the registered ``mmsp`` attention (Ulysses / zigzag ring / 2D); the local segment ids, groups and mode
travel with the call as the ``mmsp_context`` keyword (so recomputation under activation checkpointing sees
them). :func:`mmsp_forward` stops at the final hidden states; the LM head runs only where it is needed.

Loss: ``sum of local token losses / N_sp``, the sum taken chunk-wise over the LM head
(:func:`training.loss.linear_cross_entropy`, no [tokens, vocab] logits), with ``N_sp`` = the supervised tokens
of the whole SP group's batch (all-reduced over the SP group). The returned loss tensor's VALUE is the full
batch loss on every rank, its GRADIENT is the local part; so after ``backward()`` every rank holds a partial
gradient and :func:`sync_gradients` sums them over the SP group. Data parallelism: with ``count_over="sp"``
(default) each SP group contributes the mean over its own batch and :func:`sync_gradients`
(``dp_reduce="mean"``) averages over DP replicas (= DDP semantics); with ``count_over="world"`` the count is
all-reduced over all ranks and ``dp_reduce="sum"`` gives the exact token-weighted mean over the global batch.

With SP size 1 (``groups`` None or sp_size 1) everything is the plain single-process model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from training.loss import token_logprobs
from training.model.modeling import IGNORE_INDEX, positions_from_segments, shift_labels, use_project_attention

from .attention import batch_context, layout_scheme, resolve_mode
from .groups import SPGroups
from .layout import pad_to, padded_length, shard, shard_positions, unshard

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
    hidden: torch.Tensor  # [B, S_local, hidden] final LLM hidden states (S_local = padded_len / P; S at SP 1)
    labels: torch.Tensor  # shifted next-token targets aligned with hidden (-100 = none)
    positions: torch.Tensor  # sequence index of each local token in the padded global sequence
    segment_ids: torch.Tensor  # local segment ids (-1 padding)
    seq_len: int  # unpadded global length S
    padded_len: int


def enable_mmsp_attention(model) -> None:
    """Switch the LLM to the ``mmsp`` attention (the LongVILA model's default already; needed for stock
    models); at SP size 1 it is exact local attention."""
    use_project_attention(model.llm)


def mmsp_forward(
    model, batch: dict[str, Any], groups: SPGroups | None, *, mode: str = "auto"
) -> MMSPOutput:
    """Run the model trunk on this rank's part of the batch (stage 1 + stage 2; see module doc): final
    hidden states, no LM head. The batch context travels to every attention layer as a keyword, so
    activation checkpointing recomputes the same attention."""
    enable_mmsp_attention(model)
    device = model.get_input_embeddings().weight.device
    input_ids = batch["input_ids"].to(device)
    B, S = input_ids.shape
    seg = batch_segments(batch).to(device)
    labels = batch.get("labels")
    labels = torch.full_like(input_ids, IGNORE_INDEX) if labels is None else labels.to(device)
    pixel_values = batch.get("pixel_values")
    feats = encode_frames(model, None if pixel_values is None else pixel_values.to(device), groups)
    given_pos = batch.get("position_ids")
    if not _sp_active(groups):
        pos_ids = positions_from_segments(seg) if given_pos is None else given_pos.to(device)
        trunk = model.llm_hidden_states(model.merge_embeddings(input_ids, feats), position_ids=pos_ids,
                                        use_cache=False, mmsp_context=batch_context(seg, groups=None, mode=mode))
        pos = torch.arange(S, device=device).expand(B, S)
        return MMSPOutput(trunk.last_hidden_state, shift_labels(labels, seg), pos, seg, S, S)

    mode = resolve_mode(mode, groups)
    scheme = layout_scheme(mode)
    L = padded_length(S, groups)
    ids, seg_p = pad_to(input_ids, 1, L, 0), pad_to(seg, 1, L, -1)
    shifted = shift_labels(pad_to(labels, 1, L, IGNORE_INDEX), seg_p)
    pos_ids = positions_from_segments(seg_p) if given_pos is None else pad_to(given_pos.to(device), 1, L, 0)

    def sh(x):
        return shard(x, 1, groups, scheme=scheme)

    l_seg = sh(seg_p)
    embeds = _local_embeddings(model, ids, feats, sh)
    ctx = batch_context(l_seg, groups=groups, mode=mode)
    trunk = model.llm_hidden_states(embeds, position_ids=sh(pos_ids), use_cache=False, mmsp_context=ctx)
    seq_index = shard_positions(L, groups, scheme=scheme, device=device).expand(B, -1)
    return MMSPOutput(trunk.last_hidden_state, sh(shifted), seq_index, l_seg, S, L)


def _local_embeddings(model, ids: torch.Tensor, feats: torch.Tensor | None, sh) -> torch.Tensor:
    """Embeddings of this rank's tokens (``sh`` shards a [B, L] tensor), image rows from the gathered frames."""
    img_mask = ids == model.config.image_token_id
    n_img = int(img_mask.sum())
    n_feat = 0 if feats is None else feats.shape[0] * feats.shape[1]
    if n_img != n_feat:
        raise ValueError(f"input_ids hold {n_img} image tokens but the frames give {n_feat} visual embeddings")
    img_index = (img_mask.reshape(-1).long().cumsum(0) - 1).reshape(ids.shape)
    l_mask, l_idx = sh(img_mask), sh(img_index)
    embeds = model.get_input_embeddings()(sh(ids))
    if feats is not None:
        flat = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
        rows = flat.index_select(0, l_idx[l_mask])  # always in the graph (even if empty): keeps backward collective
        embeds = embeds.masked_scatter(l_mask.unsqueeze(-1).expand_as(embeds), rows)
    return embeds


def _count_group(groups: SPGroups | None, count_over: str):
    """The process group the supervised-token count is summed over (None: this process alone)."""
    if count_over not in ("sp", "world"):
        raise ValueError("count_over must be 'sp' or 'world'")
    if count_over == "world" and dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return groups.sp_group if _sp_active(groups) else None


def mmsp_loss(
    model, batch: dict[str, Any], groups: SPGroups | None, *, mode: str = "auto", count_over: str = "sp",
    backward: bool = False,
) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy of the batch under MM-SP. Returns ``(loss, num_supervised_tokens_global)``.

    The local token losses are summed chunk-wise over the LM head (:func:`training.loss.linear_cross_entropy`,
    no [tokens, vocab] logits) and divided by the supervised-token count of the SP group (``count_over="sp"``)
    or of the world. ``loss`` has the full batch loss as its value on every rank and the local part as its
    gradient (see module doc); call :func:`sync_gradients` after ``backward``. ``backward=True`` also runs
    the backward pass (activation checkpointing works either way)."""
    group = _count_group(groups, count_over)
    out = mmsp_forward(model, batch, groups, mode=mode)
    local_sum = model.token_loss_sum(out.hidden, out.labels)
    count = (out.labels != IGNORE_INDEX).sum().to(torch.float64)
    if group is not None:
        dist.all_reduce(count, group=group)
    n_global = int(count.item())
    loss_local = local_sum / max(n_global, 1)
    value = loss_local.detach().clone()
    if group is not None:
        dist.all_reduce(value, group=group)
    loss = value + (loss_local - loss_local.detach())  # value: the reduced loss exactly; grad: the local part
    if backward:
        loss.backward()
    return loss, n_global


def mmsp_logits(model, batch: dict[str, Any], groups: SPGroups | None, *, mode: str = "auto", gather: bool = True,
                positions: list[int] | None = None):
    """Inference/eval forward under MM-SP.

    ``positions`` (a one-row batch): the logits rows [len(positions), V] (float32) at those global sequence
    positions, complete on every rank -- the LM head runs on those rows only.
    ``gather=True``: the full logits [B, S, V] (unsharded, padding removed) on every rank.
    ``gather=False``: ``(local_logits [B, S_local, V], positions [B, S_local])`` with each local token's index
    in the padded global sequence (indices >= S are padding)."""
    out = mmsp_forward(model, batch, groups, mode=mode)
    head = model.llm.get_output_embeddings()
    if positions is not None:
        rows, found = _rows_at(out, positions)
        logits = torch.zeros(len(positions), head.weight.shape[0], dtype=torch.float32, device=out.hidden.device)
        logits[found] = head(rows).float()
        return _sum_over_sp(logits, groups)
    logits = head(out.hidden)
    if not gather:
        return logits, out.positions
    if not _sp_active(groups):
        return logits
    full = unshard(logits, 1, groups, scheme=layout_scheme(resolve_mode(mode, groups)))
    return full[:, : out.seq_len]


def mmsp_token_logprobs(model, batch: dict[str, Any], groups: SPGroups | None, positions: list[int],
                        targets: list[int], *, mode: str = "auto") -> torch.Tensor:
    """log p(targets[j] | tokens before and at position positions[j]) for a one-row batch: [k] float32,
    complete on every rank, computed chunk-wise over the LM head (:func:`training.loss.token_logprobs`)."""
    if len(positions) != len(targets):
        raise ValueError(f"{len(positions)} positions but {len(targets)} targets")
    out = mmsp_forward(model, batch, groups, mode=mode)
    rows, found = _rows_at(out, positions)
    wanted = torch.tensor(targets, dtype=torch.long, device=rows.device)[found]
    result = torch.zeros(len(positions), dtype=torch.float32, device=rows.device)
    result[found] = token_logprobs(rows, model.lm_head_weight(), wanted).float()
    return _sum_over_sp(result, groups)


def _rows_at(out: MMSPOutput, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's hidden rows at the given global positions (one-row batch) and which positions they are."""
    if out.hidden.shape[0] != 1:
        raise ValueError(f"positions need a one-row batch, got {out.hidden.shape[0]} rows")
    local = {int(p): i for i, p in enumerate(out.positions[0].tolist())}
    found = [j for j, p in enumerate(positions) if int(p) in local]
    index = torch.tensor([local[int(positions[j])] for j in found], dtype=torch.long, device=out.hidden.device)
    return out.hidden[0].index_select(0, index), torch.tensor(found, dtype=torch.long, device=out.hidden.device)


def _sum_over_sp(x: torch.Tensor, groups: SPGroups | None) -> torch.Tensor:
    """Every position is held by exactly one SP rank: a sum completes the rows on every rank."""
    if _sp_active(groups):
        dist.all_reduce(x, group=groups.sp_group)
    return x


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
    "mmsp_token_logprobs",
    "sync_gradients",
]
