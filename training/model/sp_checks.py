"""Rank-side whole-model MM-SP checks (run on every rank of a :class:`training.sp.testing.DistributedPool`).

They compare the sharded VLM (:mod:`training.sp.sharding`) against the plain single-process model on
identical data: loss and every parameter's gradient (``case_vlm_grads``), logits (``case_vlm_logits``) and
several AdamW steps (``case_vlm_train``). Used by ``tests/mmsp/test_vlm_sp.py`` and ``bench/``; the functions
are importable by spawned workers, which is why they live in the library.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

_CACHE: dict[tuple, Any] = {}


def _load(ckpt: str, dtype_name: str):
    key = (ckpt, dtype_name)
    if key not in _CACHE:
        from .profiles import load_checkpoint

        model, proc = load_checkpoint(ckpt, dtype=getattr(torch, dtype_name))
        model.train()
        _CACHE[key] = (model, proc)
    return _CACHE[key]


def _groups(u: int, r: int):
    from training.sp.testing import cached_groups

    return cached_groups(u, r)


def smoke_batch(proc, data: dict) -> dict:
    from .smoke_data import SmokeBatchSource

    cfg = dict(data)
    index = cfg.pop("index", 0)
    return SmokeBatchSource(proc, **cfg).batch(index)


def reference_logits(model, batch: dict) -> torch.Tensor:
    """The exact stock-transformers math, independent of the project's kernels and loss: the LLM with SDPA
    and an explicit dense block-diagonal causal mask (test-only, quadratic); full [B, S, vocab] logits."""
    from training.sp.testing import reference_mask

    from .modeling import positions_from_segments

    seg = batch["segment_ids"]
    pv = batch["pixel_values"]
    feats = model.get_image_features(pv) if pv is not None and pv.shape[0] else None
    embeds = model.merge_embeddings(batch["input_ids"], feats)
    impl = model.llm.config._attn_implementation
    model.llm.config._attn_implementation = "sdpa"
    try:
        return model.llm(inputs_embeds=embeds, attention_mask=reference_mask(seg),
                         position_ids=positions_from_segments(seg)).logits
    finally:
        model.llm.config._attn_implementation = impl


def reference_loss(model, batch: dict) -> torch.Tensor:
    """:func:`reference_logits` + ``F.cross_entropy`` over all logits (mean over supervised tokens)."""
    import torch.nn.functional as F

    from .modeling import IGNORE_INDEX, shift_labels

    logits = reference_logits(model, batch)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                           shift_labels(batch["labels"], batch["segment_ids"]).reshape(-1), ignore_index=IGNORE_INDEX)


def _grad_errors(model, ref: dict[str, torch.Tensor]) -> tuple[float, float, str]:
    """(worst relative error, worst absolute error, worst parameter name) over all parameters.

    Relative error of a parameter = max|g - g_ref| / max|g_ref|, except for attention key biases
    (``*k_proj.bias``): their gradient is exactly zero in exact arithmetic (softmax is invariant to a
    per-query constant), so both runs produce rounding noise; they are measured against the largest
    gradient entry of the whole model instead."""
    worst_rel, worst_abs, worst_name = 0.0, 0.0, ""
    model_max = max(float(r.abs().max()) for r in ref.values())
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        r = ref[name]
        diff = float((g - r).abs().max())
        scale = model_max if name.endswith("k_proj.bias") else float(r.abs().max())
        rel = diff / max(scale, 1e-300)
        if rel > worst_rel:
            worst_rel, worst_name = rel, name
        worst_abs = max(worst_abs, diff)
    return worst_rel, worst_abs, worst_name


def case_vlm_grads(ckpt: str, dtype: str, data: dict, configs: list, mode: str = "auto",
                   count_over: str = "sp", grad_ckpt: bool = False) -> list[dict]:
    """For each (U, R) in ``configs``: loss and all parameter gradients of mmsp_loss + sync_gradients vs the
    plain model. Returns per-config error figures (identical on every rank after the reductions).
    ``grad_ckpt``: the sharded runs use activation checkpointing (``mmsp_loss(..., backward=True)``)."""
    model, proc = _load(ckpt, dtype)
    batch = smoke_batch(proc, data)
    model.zero_grad(set_to_none=True)
    ref_loss = reference_loss(model, batch)
    ref_loss.backward()
    ref = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
           for n, p in model.named_parameters()}
    out = []
    if grad_ckpt:  # recomputation in backward must see the MM-SP attention context: backward=True
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        for u, r in configs:
            out.append(_one_grad_case(model, batch, ref, ref_loss, u, r, mode, count_over, grad_ckpt))
    finally:
        if grad_ckpt:
            model.gradient_checkpointing_disable()
    model.zero_grad(set_to_none=True)
    return out


def _one_grad_case(model, batch, ref, ref_loss, u, r, mode, count_over, grad_ckpt) -> dict:
    from training.sp.sharding import mmsp_loss, sync_gradients

    groups = _groups(u, r)
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    loss, n_tok = mmsp_loss(model, batch, groups, mode=mode, count_over=count_over, backward=grad_ckpt)
    if not grad_ckpt:
        loss.backward()
    t_fb = time.perf_counter() - t0
    # negative control: before the SP reduction each rank holds only a partial gradient
    unsynced, _, _ = _grad_errors(model, ref)
    sync_gradients(model, groups, dp_reduce="mean" if count_over == "sp" else "sum")
    rel, ab, name = _grad_errors(model, ref)
    n_ref = int((batch["labels"][:, 1:] != -100).sum())
    return {
        "ulysses": u, "ring": r, "loss_ref": float(ref_loss), "loss_sp": float(loss),
        "loss_abs": abs(float(loss) - float(ref_loss)),
        "loss_rel": abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)),
        "tokens_sp": n_tok, "tokens_ref": n_ref, "frames": int(batch["pixel_values"].shape[0]),
        "seq_len": int(batch["input_ids"].shape[1]),
        "grad_rel": rel, "grad_abs": ab, "worst_param": name, "unsynced_grad_rel": unsynced,
        "seconds_fwd_bwd": t_fb, "params": sum(1 for _ in model.parameters()),
        "grad_ckpt": bool(grad_ckpt and model.llm.is_gradient_checkpointing),
    }


def case_vlm_logits(ckpt: str, dtype: str, data: dict, u: int, r: int) -> dict:
    """mmsp_logits (gathered) vs the plain model's logits on real tokens."""
    from training.sp.sharding import mmsp_logits

    model, proc = _load(ckpt, dtype)
    batch = smoke_batch(proc, data)
    groups = _groups(u, r)
    with torch.no_grad():
        ref = reference_logits(model, batch)
        full = mmsp_logits(model, batch, groups)
        local, pos = mmsp_logits(model, batch, groups, gather=False)
    from training.sp.layout import padded_length

    real = batch["segment_ids"] >= 0
    err = float((full - ref)[real].abs().max() / ref[real].abs().max())
    L = padded_length(batch["input_ids"].shape[1], groups)
    return {"logits_rel": err, "shape": list(full.shape), "ref_shape": list(ref.shape),
            "local_shape": list(local.shape),
            "positions": pos[0].tolist(), "padded_len": L}


def case_vlm_train(ckpt: str, data: dict, u: int, r: int, steps: int = 5, lr: float = 1e-3) -> dict:
    """``steps`` AdamW steps with MM-SP (U x R) vs the plain model (float32): per-step losses."""
    from training.sp.sharding import mmsp_loss, sync_gradients

    base, proc = _load(ckpt, "float32")
    ref_model = copy.deepcopy(base)
    sp_model = copy.deepcopy(base)
    opt_ref = torch.optim.AdamW(ref_model.parameters(), lr=lr, weight_decay=0.01)
    opt_sp = torch.optim.AdamW(sp_model.parameters(), lr=lr, weight_decay=0.01)
    groups = _groups(u, r)
    ref_losses, sp_losses = [], []
    for step in range(steps):
        batch = smoke_batch(proc, dict(data, index=step))
        opt_ref.zero_grad(set_to_none=True)
        loss = reference_loss(ref_model, batch)
        loss.backward()
        opt_ref.step()
        ref_losses.append(float(loss))
        opt_sp.zero_grad(set_to_none=True)
        loss_sp, _ = mmsp_loss(sp_model, batch, groups)
        loss_sp.backward()
        sync_gradients(sp_model, groups)
        opt_sp.step()
        sp_losses.append(float(loss_sp))
    # parameter drift, leaving out attention key biases: their true gradient is 0, and Adam turns the
    # rounding noise there into full-size steps of arbitrary sign in both runs
    drift = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                for (n, a), b in zip(sp_model.named_parameters(), ref_model.parameters())
                if not n.endswith("k_proj.bias"))
    return {"ref": ref_losses, "sp": sp_losses, "param_rel": drift}


__all__ = ["case_vlm_grads", "case_vlm_logits", "case_vlm_train", "reference_logits", "reference_loss", "smoke_batch"]
