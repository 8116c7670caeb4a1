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

from .annotate import (
    QUESTION_TYPES,
    TimedCaption,
    VideoAnnotator,
    captions_from_table,
    instruction_records,
    read_jsonl,
    to_jsonl,
)
from .captioner import CAPTIONS_SCHEMA, CaptionResult, ClipCaptioner, ClipInput, caption_video, clip_inputs, results_to_table
from .config import CaptioningConfig, ModelSettings, code_versions, make_annotator, make_backend, make_captioner
from .dataset import build_long_video_sft, load_long_video_sft
from .local import LocalChatBackend
from .openai_http import OpenAIChatBackend
from .prompts import Prompt, load_prompt
from .smoke_models import ensure_smoke_models
from .types import ChatBackend, ChatReply, ChatRequest

__all__ = [
    "QUESTION_TYPES", "TimedCaption", "VideoAnnotator", "captions_from_table", "instruction_records", "read_jsonl",
    "to_jsonl", "CAPTIONS_SCHEMA", "CaptionResult", "ClipCaptioner", "ClipInput", "caption_video", "clip_inputs",
    "results_to_table", "CaptioningConfig", "ModelSettings", "code_versions", "make_annotator", "make_backend",
    "make_captioner", "build_long_video_sft", "load_long_video_sft", "LocalChatBackend", "OpenAIChatBackend",
    "Prompt", "load_prompt", "ensure_smoke_models", "ChatBackend", "ChatReply", "ChatRequest",
]
