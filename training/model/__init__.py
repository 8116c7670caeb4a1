"""LongVILA VLM built from transformers classes: SigLIP vision tower -> mlp_downsample projector -> causal LLM.

Importing this package registers model_type "longvila" with AutoConfig / AutoModelForCausalLM / AutoProcessor.
"""

from .configuration import LongVILAConfig
from .modeling import IGNORE_INDEX, LongVILAForCausalLM, MLPDownsampleProjector
from .processing import LongVILAProcessor, build_processor, build_tokenizer
from . import register as _register  # noqa: F401  (Auto* registration side effect)
from .profiles import (
    PROFILES,
    Profile,
    build_model,
    create_smoke_checkpoint,
    get_profile,
    load_checkpoint,
    parameter_counts,
)

__all__ = [
    "IGNORE_INDEX",
    "LongVILAConfig",
    "LongVILAForCausalLM",
    "LongVILAProcessor",
    "MLPDownsampleProjector",
    "PROFILES",
    "Profile",
    "build_model",
    "build_processor",
    "build_tokenizer",
    "create_smoke_checkpoint",
    "get_profile",
    "load_checkpoint",
    "parameter_counts",
]
