"""Stage-specific model surgery: trainable modules, LoRA (peft) on the LLM and its merge for export, RoPE
base changes."""

from __future__ import annotations

import re

import torch
from torch import nn


def set_trainable(model: nn.Module, trainable: tuple[str, ...] | list[str]) -> list[str]:
    """Freeze everything, then unfreeze the named sub-modules (vision_tower, mm_projector, llm)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name in trainable:
        mod = getattr(model, name, None)
        if mod is None:
            raise ValueError(f"model has no sub-module {name!r} (has {[n for n, _ in model.named_children()]})")
        for p in mod.parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def apply_lora(model: nn.Module, r: int, alpha: int, target_modules, trainable_extra, dropout: float = 0.0) -> int:
    """Inject LoRA adapters (peft) into the LLM's attention projections, in place.

    Afterwards only the adapters and the parameters whose names contain one of `trainable_extra`
    (embeddings, norms) inside the LLM are trainable; vision tower and projector are frozen.
    Returns the number of trainable parameters.
    """
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    inject_adapter_in_model(cfg, model.llm)
    for p in model.parameters():
        p.requires_grad_(False)
    n = 0
    for name, p in model.llm.named_parameters():
        if "lora_" in name or any(t in name for t in trainable_extra):
            p.requires_grad_(True)
            n += p.numel()
    return n


_LORA_A = re.compile(r"^(?P<prefix>.+)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


def merge_lora_state(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A full state dict of a LoRA-injected model (peft names) as the plain model's state dict: every
    ``W = base + scaling * B @ A`` (computed in float32), ``.base_layer.`` dropped from names, adapters gone.
    Works on gathered (unsharded) tensors, so it is the same for the replicated and the FSDP trainer."""
    out = {k: v for k, v in state.items() if ".lora_" not in k}
    for key, a in state.items():
        m = _LORA_A.match(key)
        if m is None:
            continue
        prefix, adapter = m.group("prefix"), m.group("adapter")
        b = state[f"{prefix}.lora_B.{adapter}.weight"]
        base = out.pop(f"{prefix}.base_layer.weight")
        out[f"{prefix}.base_layer.weight"] = (base.float() + scaling * (b.float() @ a.float())).to(base.dtype)
    return {k.replace(".base_layer.", "."): v for k, v in out.items()}


def set_rope_theta(model: nn.Module, theta: float, max_length: int | None = None) -> int:
    """Raise the LLM's RoPE base (context extension) and recompute every rotary embedding's inv_freq."""
    text_cfg = model.config.text_config if hasattr(model.config, "text_config") else model.config
    rp = dict(getattr(text_cfg, "rope_parameters", None) or {"rope_type": "default"})
    rp["rope_theta"] = float(theta)
    text_cfg.rope_parameters = rp
    if max_length is not None and getattr(text_cfg, "max_position_embeddings", 0) < max_length:
        text_cfg.max_position_embeddings = int(max_length)
    n = 0
    for mod in model.modules():
        if hasattr(mod, "inv_freq") and hasattr(mod, "rope_type") and hasattr(mod, "config"):
            mod.config = text_cfg
            if mod.rope_type == "default":
                inv_freq, scale = mod.compute_default_rope_parameters(text_cfg, device=mod.inv_freq.device)
            else:
                from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

                inv_freq, scale = ROPE_INIT_FUNCTIONS[mod.rope_type](text_cfg, mod.inv_freq.device)
            with torch.no_grad():
                mod.inv_freq.copy_(inv_freq.to(mod.inv_freq.dtype))
                if hasattr(mod, "original_inv_freq"):
                    mod.original_inv_freq.copy_(inv_freq.to(mod.original_inv_freq.dtype))
            mod.attention_scaling = scale
            n += 1
    return n
