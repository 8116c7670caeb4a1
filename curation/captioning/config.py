"""Captioning / LLM settings, read from the environment, and the backends built from them.

| variable | default | meaning |
|---|---|---|
| LONGVILA_CAPTION_BACKEND | `local` | `local` (transformers) or `openai` (OpenAI-compatible HTTP server) |
| LONGVILA_CAPTION_MODEL | `smoke` | VLM: local path or hub id (local), or the served model name (openai); `smoke`: |
| | | the tiny random model of `smoke_models` |
| LONGVILA_CAPTION_ENDPOINT | unset | base URL for `openai`, e.g. `http://127.0.0.1:8000/v1` |
| LONGVILA_LLM_BACKEND | `local` | as above, for summaries and question-answer pairs |
| LONGVILA_LLM_MODEL | `smoke` | causal LM: local path / hub id, or served model name |
| LONGVILA_LLM_ENDPOINT | unset | base URL for `openai` |
| LONGVILA_CAPTION_API_KEY_ENV | `OPENAI_API_KEY` | the variable holding the API key (the key itself is never stored) |
| LONGVILA_CAPTION_BATCH_SIZE | 8 | clips / prompts per `generate` call (local) |
| LONGVILA_CAPTION_CONCURRENCY | 4 | parallel HTTP requests (openai) |
| LONGVILA_CAPTION_TIMEOUT_S | 120 | HTTP read timeout per request |
| LONGVILA_CAPTION_MAX_RETRIES | 3 | HTTP retries on connection errors / timeouts / 429 / 5xx |
| LONGVILA_CAPTION_MAX_NEW_TOKENS | 64 | caption length in tokens |
| LONGVILA_CAPTION_MAX_CHARS | 500 | longer captions are cut at a word boundary and flagged `truncated` |
| LONGVILA_CAPTION_LANGUAGE | `en` | target language (script check) |
| LONGVILA_SUMMARY_MAX_NEW_TOKENS | 256 | summary reply length |
| LONGVILA_QA_MAX_NEW_TOKENS | 1024 | question-answer reply length |
| LONGVILA_LLM_MAX_ATTEMPTS | 3 | attempts per structured reply before the video is recorded as failed |
| LONGVILA_CAPTION_PROMPT / LONGVILA_SUMMARY_PROMPT / LONGVILA_QA_PROMPT | `v1` | prompt versions (curation/prompts) |
| LONGVILA_PROMPTS_DIR | `curation/prompts` | folder of the prompt files |
| LONGVILA_MODELS_DIR | `<root>/data/models` | where the smoke models are built (cached) |
| LONGVILA_CAPTION_DEVICE | `cpu` | torch device for local models |
| LONGVILA_CAPTION_TORCH_THREADS | unset | torch CPU threads for generation (unset: 1 for smoke models, else torch's) |

The model ids, prompt tags (version + content hash) and the decoding parameters make up the code
versions (`code_versions`), so changing a model or editing a prompt marks exactly the affected
layers stale.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, replace

from longvila.settings import project_root

from .prompts import load_prompt

CODE_VERSION = "captioning-v1"
SMOKE = "smoke"


def _env(name: str, default, cast=str):
    v = os.environ.get(name)
    return default if v is None or v == "" else cast(v)


@dataclass(frozen=True)
class ModelSettings:
    backend: str = "local"  # "local" | "openai"
    model: str = SMOKE
    endpoint: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    batch_size: int = 8
    concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 3
    device: str = "cpu"
    torch_threads: int | None = None  # None: 1 for the smoke models, torch's default otherwise

    def __post_init__(self):
        if self.backend not in ("local", "openai"):
            raise ValueError(f"backend must be 'local' or 'openai', got {self.backend!r}")
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("backend 'openai' needs an endpoint URL")


@dataclass(frozen=True)
class CaptioningConfig:
    vlm: ModelSettings = ModelSettings()
    llm: ModelSettings = ModelSettings()
    caption_prompt: str = "v1"
    summary_prompt: str = "v1"
    qa_prompt: str = "v1"
    caption_max_new_tokens: int = 64
    caption_max_chars: int = 500
    language: str = "en"
    summary_max_new_tokens: int = 256
    qa_max_new_tokens: int = 1024
    max_attempts: int = 3
    models_dir: str | None = None
    prompts_dir: str | None = None

    @classmethod
    def from_env(cls) -> "CaptioningConfig":
        common = dict(
            api_key_env=_env("LONGVILA_CAPTION_API_KEY_ENV", "OPENAI_API_KEY"),
            batch_size=_env("LONGVILA_CAPTION_BATCH_SIZE", 8, int),
            concurrency=_env("LONGVILA_CAPTION_CONCURRENCY", 4, int),
            timeout_s=_env("LONGVILA_CAPTION_TIMEOUT_S", 120.0, float),
            max_retries=_env("LONGVILA_CAPTION_MAX_RETRIES", 3, int),
            device=_env("LONGVILA_CAPTION_DEVICE", "cpu"),
            torch_threads=_env("LONGVILA_CAPTION_TORCH_THREADS", None, int),
        )
        return cls(
            vlm=ModelSettings(backend=_env("LONGVILA_CAPTION_BACKEND", "local"),
                              model=_env("LONGVILA_CAPTION_MODEL", SMOKE),
                              endpoint=_env("LONGVILA_CAPTION_ENDPOINT", None), **common),
            llm=ModelSettings(backend=_env("LONGVILA_LLM_BACKEND", "local"), model=_env("LONGVILA_LLM_MODEL", SMOKE),
                              endpoint=_env("LONGVILA_LLM_ENDPOINT", None), **common),
            caption_prompt=_env("LONGVILA_CAPTION_PROMPT", "v1"),
            summary_prompt=_env("LONGVILA_SUMMARY_PROMPT", "v1"),
            qa_prompt=_env("LONGVILA_QA_PROMPT", "v1"),
            caption_max_new_tokens=_env("LONGVILA_CAPTION_MAX_NEW_TOKENS", 64, int),
            caption_max_chars=_env("LONGVILA_CAPTION_MAX_CHARS", 500, int),
            language=_env("LONGVILA_CAPTION_LANGUAGE", "en"),
            summary_max_new_tokens=_env("LONGVILA_SUMMARY_MAX_NEW_TOKENS", 256, int),
            qa_max_new_tokens=_env("LONGVILA_QA_MAX_NEW_TOKENS", 1024, int),
            max_attempts=_env("LONGVILA_LLM_MAX_ATTEMPTS", 3, int),
            models_dir=_env("LONGVILA_MODELS_DIR", None),
            prompts_dir=_env("LONGVILA_PROMPTS_DIR", None),
        )

    def replace(self, **changes) -> "CaptioningConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved_models_dir(self) -> str:
        return self.models_dir or str(project_root() / "data" / "models")


def model_id(ms: ModelSettings, role: str) -> str:
    """Stable model id for code versions: smoke models by their build version, others by name."""
    if ms.model == SMOKE:
        from .smoke_models import SMOKE_VERSION

        return f"{SMOKE_VERSION}/{role}"
    return ms.model if ms.backend == "local" else f"{ms.model}@{ms.endpoint}"


def code_versions(cfg: CaptioningConfig) -> dict[str, str]:
    cap = load_prompt("clip_caption", cfg.caption_prompt, cfg.prompts_dir)
    summ = load_prompt("video_summary", cfg.summary_prompt, cfg.prompts_dir)
    qa = load_prompt("video_qa", cfg.qa_prompt, cfg.prompts_dir)
    vlm, llm = model_id(cfg.vlm, "vlm"), model_id(cfg.llm, "llm")
    dec = f"lang={cfg.language}:attempts={cfg.max_attempts}"
    return {
        "clip_captions": f"{CODE_VERSION}:{cap.tag}:{vlm}:tok={cfg.caption_max_new_tokens}"
                         f":chars={cfg.caption_max_chars}:lang={cfg.language}",
        "video_summary": f"{CODE_VERSION}:{summ.tag}:{llm}:tok={cfg.summary_max_new_tokens}:{dec}",
        "video_instructions": f"{CODE_VERSION}:{qa.tag}:{llm}:tok={cfg.qa_max_new_tokens}:{dec}",
        "long_video_sft_dataset": f"{CODE_VERSION}:sft-jsonl-v2",  # v2: manifest key content_hash (was sha256)
    }


_BACKENDS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def make_backend(ms: ModelSettings, role: str, models_dir: str | None = None):
    """The ChatBackend for one model setting (local models are loaded once per process and cached)."""
    if ms.backend == "openai":
        from .openai_http import OpenAIChatBackend

        return OpenAIChatBackend(ms.endpoint, ms.model, api_key_env=ms.api_key_env, concurrency=ms.concurrency,
                                 timeout_s=ms.timeout_s, max_retries=ms.max_retries)
    path = ms.model
    if path == SMOKE:
        from .smoke_models import ensure_smoke_models

        paths = ensure_smoke_models(models_dir or str(project_root() / "data" / "models"))
        path = paths.vlm if role == "vlm" else paths.llm
    threads = ms.torch_threads if ms.torch_threads else (1 if ms.model == SMOKE else None)
    key = (path, role, ms.batch_size, ms.device, threads)
    with _LOCK:
        if key not in _BACKENDS:
            from .local import LocalChatBackend

            _BACKENDS[key] = LocalChatBackend(path, kind=role, batch_size=ms.batch_size, device=ms.device,
                                              model_id=model_id(ms, role), num_threads=threads)
        return _BACKENDS[key]


def make_captioner(cfg: CaptioningConfig, backend=None):
    from .captioner import ClipCaptioner

    return ClipCaptioner(backend or make_backend(cfg.vlm, "vlm", cfg.resolved_models_dir()),
                         prompt=load_prompt("clip_caption", cfg.caption_prompt, cfg.prompts_dir),
                         max_new_tokens=cfg.caption_max_new_tokens, max_chars=cfg.caption_max_chars,
                         language=cfg.language)


def make_annotator(cfg: CaptioningConfig, backend=None):
    from .annotate import VideoAnnotator

    return VideoAnnotator(backend or make_backend(cfg.llm, "llm", cfg.resolved_models_dir()),
                          summary_prompt=load_prompt("video_summary", cfg.summary_prompt, cfg.prompts_dir),
                          qa_prompt=load_prompt("video_qa", cfg.qa_prompt, cfg.prompts_dir),
                          summary_max_new_tokens=cfg.summary_max_new_tokens,
                          qa_max_new_tokens=cfg.qa_max_new_tokens, max_attempts=cfg.max_attempts,
                          language=cfg.language)
