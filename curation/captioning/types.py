"""Backend-neutral request/reply types shared by the local and HTTP backends."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

# error kinds carried by a failed reply / caption / summary
UNAVAILABLE = "unavailable"  # connection refused, timeouts, 5xx after all retries: infrastructure
HTTP_ERROR = "http_error"  # a non-retryable HTTP status for this request (400, 413, 422, ...)
CONFIG_ERROR = "config_error"  # 401 / 403 / 404: wrong key, endpoint or model name; fails every request
BAD_RESPONSE = "bad_response"  # the server's reply is not an OpenAI chat-completions object
INVALID_OUTPUT = "invalid_output"  # the model's text is unparseable / schema-invalid after retries
EMPTY_INPUT = "empty_input"  # e.g. a clip with no frames
REJECTED = "rejected"  # a reply that breaks a content rule (empty, wrong language)
BAD_INPUT = "bad_input"  # the request itself cannot be processed (e.g. an undecodable frame)


class BackendError(Exception):
    def __init__(self, kind: str, message: str, retry_after_s: float | None = None):
        self.kind = kind
        self.retry_after_s = retry_after_s
        super().__init__(message)


@dataclass
class ChatRequest:
    """One chat completion. `messages` use the OpenAI shape; content is a string or a list of parts
    `{"type": "text", "text": ...}` / `{"type": "image", "image": PIL.Image | JPEG bytes}`."""

    messages: list[dict]
    max_new_tokens: int = 64
    json_schema: dict | None = None
    schema_name: str = "reply"
    temperature: float = 0.0
    seed: int | None = None


@dataclass
class ChatReply:
    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    error: str | None = None
    error_kind: str | None = None
    attempts: int = 1
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class ChatBackend(Protocol):
    """What the captioner and the annotator need from a model server or a local model."""

    model_id: str

    def chat(self, requests: Sequence[ChatRequest]) -> list[ChatReply]: ...


def image_parts(messages: list[dict]) -> list[Any]:
    out = []
    for m in messages:
        if isinstance(m.get("content"), list):
            out.extend(p["image"] for p in m["content"] if p.get("type") == "image")
    return out


def to_pil(image: Any):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (bytes, bytearray, memoryview)):
        im = Image.open(io.BytesIO(bytes(image)))
        im.load()
        return im.convert("RGB")
    raise TypeError(f"unsupported image type {type(image).__name__}")


def to_jpeg(image: Any, quality: int = 90) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    buf = io.BytesIO()
    to_pil(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class GenerationSettings:
    """Decoding settings shared by the captioner and the annotator."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    extra: dict = field(default_factory=dict)
