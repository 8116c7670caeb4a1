"""`LongVILAConfig`: a composite config (SigLIP vision tower + mlp_downsample projector + causal LLM)."""

from __future__ import annotations

import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

MODEL_TYPE = "longvila"


class LongVILAConfig(PreTrainedConfig):
    """Configuration of a LongVILA-style VLM.

    Sub-configs:
      * ``vision_config``: a ``siglip_vision_model`` config (SigLIP vision tower).
      * ``text_config``: any causal-LM config known to ``AutoConfig`` (``qwen2``, ``llama`` ...).

    Fields:
      * ``image_token_id``: id of the per-frame placeholder token (``<image>``) in the tokenizer.
      * ``projector_type``: ``"mlp_downsample"`` (2x2 patch concat -> LayerNorm -> Linear -> GELU -> Linear).
      * ``mm_vision_select_layer``: which vision hidden state feeds the projector (-1: the final,
        post-layernormed output; -2: the input of the last encoder layer, as in VILA).
    """

    model_type = MODEL_TYPE

    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 0
    projector_type: str = "mlp_downsample"
    mm_vision_select_layer: int = -1
    downsample: int = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.projector_type != "mlp_downsample":
            raise ValueError(f"unsupported projector_type {self.projector_type!r} (only 'mlp_downsample')")
        # the LLM decides about tying; keep the composite flag in sync so PreTrainedModel does not tie twice
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    # ------------------------------------------------------------------ derived sizes
    @property
    def patches_per_side(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def tokens_per_frame(self) -> int:
        side = math.ceil(self.patches_per_side / self.downsample)
        return side * side

    @property
    def hidden_size(self) -> int:  # what generation utilities ask for
        return self.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    def get_text_config(self, *args, **kwargs):
        return self.text_config


__all__ = ["LongVILAConfig", "MODEL_TYPE"]
