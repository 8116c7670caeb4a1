"""Register LongVILA with the transformers Auto classes (model_type "longvila"). Idempotent."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

from .configuration import MODEL_TYPE, LongVILAConfig
from .modeling import LongVILAForCausalLM
from .processing import LongVILAProcessor


def register() -> None:
    try:
        AutoConfig.register(MODEL_TYPE, LongVILAConfig)
    except ValueError:
        pass  # already registered
    try:
        AutoModelForCausalLM.register(LongVILAConfig, LongVILAForCausalLM)
    except ValueError:
        pass
    try:
        AutoProcessor.register(LongVILAConfig, LongVILAProcessor)
    except ValueError:
        pass


register()
