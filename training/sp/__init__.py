"""MM-SP: multi-modal sequence parallelism (process groups, zigzag layout, Ulysses, zigzag ring, 2D attention on
fused block kernels with document ranges, transformers attention-interface registration). No Dagster; works on
gloo (CPU) and nccl (GPU)."""

from .attention import (
    MODES,
    batch_context,
    current_batch_context,
    layout_scheme,
    mmsp_attention_forward,
    register_mmsp_attention,
    resolve_mode,
    sp_attention,
    sp_batch_context,
)
from .groups import SPGroups, get_sp_groups, group_ranks, init_sp_groups, set_sp_groups
from .layout import pad_to, padded_length, shard, shard_positions, unshard

__all__ = [
    "MODES", "SPGroups", "batch_context", "current_batch_context", "get_sp_groups", "group_ranks", "init_sp_groups",
    "layout_scheme", "mmsp_attention_forward", "pad_to", "padded_length", "register_mmsp_attention",
    "resolve_mode", "set_sp_groups", "shard", "shard_positions", "sp_attention", "sp_batch_context", "unshard",
]
