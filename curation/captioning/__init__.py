"""Clip captions (VLM), video summaries and question-answer instructions (LLM) for long-video data.

Public API (Dagster-free):

    from curation.captioning import (
        LocalChatBackend, OpenAIChatBackend,           # backends: local transformers / OpenAI-compatible HTTP
        ClipCaptioner, ClipInput, CaptionResult,        # caption_clips(clips) -> list[CaptionResult]
        VideoAnnotator, captions_from_table,            # summarize(...), question_answers(...)
        instruction_records, build_long_video_sft, load_long_video_sft,
        CaptioningConfig, make_captioner, make_annotator, ensure_smoke_models, load_prompt,
    )

See the module docs of `captioner` (CLIP_CAPTIONS Parquet), `annotate` (summary JSON, LLaVA
instruction records) and `dataset` (long_video_sft layout and manifest).
"""

from importlib import import_module

# name -> submodule; imported on first use so that `import curation.captioning.<light module>`
# (e.g. from the Dagster definitions) does not pull in torch / transformers.
_EXPORTS = {
    "QUESTION_TYPES": "annotate", "TimedCaption": "annotate", "VideoAnnotator": "annotate",
    "captions_from_table": "annotate", "instruction_records": "annotate", "read_jsonl": "annotate",
    "to_jsonl": "annotate",
    "CAPTIONS_SCHEMA": "captioner", "CaptionResult": "captioner", "ClipCaptioner": "captioner",
    "ClipInput": "captioner",
    "caption_video": "captioner", "clip_inputs": "captioner", "results_to_table": "captioner",
    "CaptioningConfig": "config", "ModelSettings": "config", "code_versions": "config", "make_annotator": "config",
    "make_backend": "config", "make_captioner": "config",
    "build_long_video_sft": "dataset", "load_long_video_sft": "dataset",
    "LocalChatBackend": "local", "OpenAIChatBackend": "openai_http", "Prompt": "prompts", "load_prompt": "prompts",
    "ensure_smoke_models": "smoke_models", "ChatBackend": "types", "ChatReply": "types", "ChatRequest": "types",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
