"""Model profiles: tiny random ``smoke`` models for tests/demos and the real LongVILA architectures
(validated on the meta device, no weights needed).

Public API::

    get_profile(name) -> Profile
    build_model(profile_or_path, dtype=torch.float32, device="cpu", seed=None, attn_implementation="sdpa")
    parameter_counts(model) -> {"vision", "projector", "llm", "total"}
    create_smoke_checkpoint(path, profile="smoke", seed=0) -> path   # model + tokenizer + processor
    load_checkpoint(path_or_hub_id, dtype=None, device="cpu", attn_implementation=None) -> (model, processor)
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from longvila.errors import InputError
from longvila.io import atomic_dir

from .configuration import LongVILAConfig
from .modeling import LongVILAForCausalLM

# --------------------------------------------------------------------------- architectures
# SigLIP so400m-patch14-384 (google/siglip-so400m-patch14-384, vision part); pooling head unused by VILA.
SIGLIP_SO400M = dict(
    model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
    num_attention_heads=16, patch_size=14, image_size=384, hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6, vision_use_head=False,
)
# Qwen2-7B (Qwen/Qwen2-7B config.json)
QWEN2_7B = dict(
    model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, max_position_embeddings=131072,
    rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
)
# Qwen2-1.5B (Qwen/Qwen2-1.5B config.json): tied input/output embeddings
QWEN2_1_5B = dict(
    model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072,
    rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=True,
)
# Meta-Llama-3-8B (config.json)
LLAMA3_8B = dict(
    model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
    rope_theta=500000.0, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
)

SMOKE_VISION = dict(
    model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=2, patch_size=8, image_size=32, vision_use_head=False,
)
SMOKE_QWEN2 = dict(
    model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=512, max_position_embeddings=8192, rope_theta=10000.0,
    tie_word_embeddings=False,
)
SMOKE_LLAMA = dict(SMOKE_QWEN2, model_type="llama")


@dataclass(frozen=True)
class Profile:
    name: str
    vision: dict[str, Any]
    text: dict[str, Any]
    image_token_id: int | None  # None: taken from the locally built tokenizer (smoke profiles)
    tokenizer_vocab: int | None = None  # smoke profiles: size of the locally trained BPE
    description: str = ""
    published: dict[str, float] = field(default_factory=dict)  # parameter counts for validation

    def config(self, image_token_id: int | None = None, **overrides) -> LongVILAConfig:
        tid = image_token_id if image_token_id is not None else self.image_token_id
        if tid is None:
            from .processing import IMAGE_TOKEN, build_tokenizer

            tid = build_tokenizer(self.tokenizer_vocab).convert_tokens_to_ids(IMAGE_TOKEN)
        text = copy.deepcopy(self.text)
        text.update(overrides.pop("text", {}))
        vision = copy.deepcopy(self.vision)
        vision.update(overrides.pop("vision", {}))
        return LongVILAConfig(vision_config=vision, text_config=text, image_token_id=tid, **overrides)

    @property
    def is_smoke(self) -> bool:
        return self.tokenizer_vocab is not None


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke", SMOKE_VISION, SMOKE_QWEN2, None, tokenizer_vocab=512,
        description="tiny random SigLIP (2 layers, hidden 32, patch 8, image 32) + Qwen2 (2 layers, hidden 64, "
                    "4 heads, 2 KV heads)",
    ),
    "smoke-llama": Profile(
        "smoke-llama", SMOKE_VISION, SMOKE_LLAMA, None, tokenizer_vocab=512,
        description="tiny random SigLIP + Llama (2 layers, hidden 64, 4 heads, 2 KV heads)",
    ),
    "longvila-7b-qwen2": Profile(
        "longvila-7b-qwen2", SIGLIP_SO400M, QWEN2_7B, 151646,
        description="SigLIP-so400m-patch14-384 + mlp_downsample + Qwen2-7B",
        published={"llm": 7.62e9, "vision": 0.413e9},
    ),
    "longvila-1.5b-qwen2": Profile(
        "longvila-1.5b-qwen2", SIGLIP_SO400M, QWEN2_1_5B, 151646,
        description="SigLIP-so400m-patch14-384 + mlp_downsample + Qwen2-1.5B",
        published={"llm": 1.54e9, "vision": 0.413e9},
    ),
    "longvila-8b-llama3": Profile(
        "longvila-8b-llama3", SIGLIP_SO400M, LLAMA3_8B, 128002,
        description="SigLIP-so400m-patch14-384 + mlp_downsample + Llama-3-8B",
        published={"llm": 8.03e9, "vision": 0.413e9},
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise InputError(name, f"unknown model profile; known: {', '.join(sorted(PROFILES))}") from None


# --------------------------------------------------------------------------- building / loading
def _is_checkpoint_like(x: str) -> bool:
    return x not in PROFILES


def build_model(
    profile_or_path: str | Profile | LongVILAConfig,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    attn_implementation: str = "sdpa",
) -> LongVILAForCausalLM:
    """A randomly initialised model from a profile (or config), or a checkpoint loaded from a path/id.

    ``device="meta"`` builds the architecture without allocating weights (for shapes and counts)."""
    if isinstance(profile_or_path, (str, os.PathLike)) and _is_checkpoint_like(str(profile_or_path)):
        model, _ = load_checkpoint(profile_or_path, dtype=dtype, device=device, attn_implementation=attn_implementation)
        return model
    if isinstance(profile_or_path, LongVILAConfig):
        config = profile_or_path
    else:
        prof = profile_or_path if isinstance(profile_or_path, Profile) else get_profile(str(profile_or_path))
        config = prof.config()
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = LongVILAForCausalLM(config)
    model = model.to(dtype=dtype)
    model.eval()
    return model


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts per part (tied parameters counted once)."""
    out = {"vision": 0, "projector": 0, "llm": 0, "other": 0}
    for name, p in model.named_parameters():  # named_parameters de-duplicates shared tensors
        key = {"vision_tower": "vision", "mm_projector": "projector", "llm": "llm"}.get(name.split(".")[0], "other")
        out[key] += p.numel()
    if not out["other"]:
        del out["other"]
    out["total"] = sum(v for k, v in out.items())
    return out


SMOKE_MARKER = "longvila_smoke.json"


def create_smoke_checkpoint(path: str | os.PathLike, profile: str = "smoke", seed: int = 0) -> str:
    """Write a tiny random model + tokenizer + processor to ``path`` (atomically) and return the path.

    Idempotent: an existing checkpoint written for the same profile and seed is reused."""
    prof = get_profile(profile)
    if not prof.is_smoke:
        raise InputError(profile, "create_smoke_checkpoint only builds the tiny smoke profiles")
    path = Path(path)
    marker = {"profile": profile, "seed": int(seed), "format": 1}
    mpath = path / SMOKE_MARKER
    if mpath.exists():
        try:
            if json.loads(mpath.read_text()) == marker:
                return str(path)
        except (OSError, ValueError):
            pass
    from .processing import build_processor

    config = prof.config()
    processor = build_processor(config.tokens_per_frame, config.vision_config.image_size, prof.tokenizer_vocab)
    if processor.image_token_id != config.image_token_id:
        raise RuntimeError("tokenizer and config disagree on the image token id")
    model = build_model(config, seed=seed)
    tok = processor.tokenizer
    model.generation_config.eos_token_id = [processor.eos_token_id, tok.eos_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    model.config.text_config.eos_token_id = processor.eos_token_id
    model.config.text_config.pad_token_id = tok.pad_token_id
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (Path(tmp) / SMOKE_MARKER).write_text(json.dumps(marker))
    return str(path)


def load_checkpoint(
    path_or_hub_id: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    with_processor: bool = True,
    local_files_only: bool | None = None,
):
    """Load ``(model, processor)`` through the normal ``from_pretrained`` path (local dir or hub id).

    A hub id works only where the hub is reachable (or already in the local HF cache); otherwise it fails
    with an InputError naming it. ``local_files_only`` (default: the ``HF_HUB_OFFLINE`` setting) skips
    the network look-up and its retries."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    from . import register  # noqa: F401  (Auto* registration)

    src = str(path_or_hub_id)
    kwargs: dict[str, Any] = {}
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    if local_files_only:
        kwargs["local_files_only"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    local = Path(src).exists()
    if not local and (src.startswith((".", "/", "~")) or os.sep in src and src.count("/") != 1):
        raise InputError(src, "no such checkpoint directory")
    try:
        if not local and local_files_only:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(src, local_files_only=True)  # fails fast when not cached
        if str(device) == "meta":
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(src, **{k: v for k, v in kwargs.items() if k == "local_files_only"})
            model = build_model(config, dtype=dtype or torch.float32, device="meta",
                                attn_implementation=attn_implementation or "sdpa")
        else:
            model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
            model = model.to(device)
        processor = (
            AutoProcessor.from_pretrained(src, local_files_only=bool(local_files_only)) if with_processor else None
        )
    except (OSError, ValueError) as exc:
        where = "local checkpoint" if local else "hub id (needs network access to the model hub)"
        raise InputError(src, f"cannot load {where}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    return model, processor


__all__ = [
    "PROFILES",
    "Profile",
    "build_model",
    "create_smoke_checkpoint",
    "get_profile",
    "load_checkpoint",
    "parameter_counts",
]
