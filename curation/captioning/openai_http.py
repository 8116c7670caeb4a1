"""OpenAI-compatible chat-completions backend over HTTP (vLLM, SGLang, TGI, `transformers serve`,
or `curation.captioning.server`).

* images are sent as base64 JPEG data URLs (`{"type": "image_url", "image_url": {"url": ...}}`);
* JSON-schema requests use `response_format={"type": "json_schema", "json_schema": {...}}`;
* requests run on a thread pool of `concurrency` workers;
* connection errors, timeouts, HTTP 408/429/5xx and non-chat-completion bodies are retried
  `max_retries` times with exponential backoff and full jitter; any other HTTP status fails that
  request at once with the server's message (401/403/404 as "config_error": wrong key, endpoint or
  model; others as "http_error": this request was refused). A request that still fails is returned as
  a failed `ChatReply` (`error_kind` "unavailable", "config_error", "http_error" or "bad_response"):
  one bad request never crashes the batch.
"""

from __future__ import annotations

import base64
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import requests

from .types import BAD_RESPONSE, CONFIG_ERROR, HTTP_ERROR, UNAVAILABLE, BackendError, ChatReply, ChatRequest, to_jpeg

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
CONFIG_STATUS = {401, 403, 404}


def _encode_messages(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            parts = []
            for p in c:
                if p.get("type") == "image":
                    b64 = base64.b64encode(to_jpeg(p["image"])).decode("ascii")
                    parts.append({"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64}"}})
                else:
                    parts.append({"type": "text", "text": p.get("text", "")})
            c = parts
        out.append({"role": m["role"], "content": c})
    return out


class OpenAIChatBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 4,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        seed: int | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.model_id = f"{model}@{self.base_url}"
        self.api_key = api_key or (os.environ.get(api_key_env) if api_key_env else None)
        self.concurrency = max(1, int(concurrency))
        self.timeout = (float(connect_timeout_s), float(timeout_s))
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self._rng = random.Random(seed)
        self._local = threading.local()

    # one requests.Session per worker thread (Session is not thread-safe)
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def payload(self, r: ChatRequest) -> dict:
        body: dict = {
            "model": self.model,
            "messages": _encode_messages(r.messages),
            "max_tokens": int(r.max_new_tokens),
            "temperature": float(r.temperature),
        }
        if r.seed is not None:
            body["seed"] = int(r.seed)
        if r.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": r.schema_name, "schema": r.json_schema, "strict": True},
            }
        return body

    def _backoff(self, attempt: int) -> float:
        # "full jitter": uniform in [0, min(cap, base * 2**attempt)]
        return self._rng.uniform(0, min(self.backoff_max_s, self.backoff_s * (2**attempt)))

    def _post_once(self, body: dict) -> ChatReply:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        try:
            resp = self._session().post(url, json=body, headers=headers, timeout=self.timeout)
        except requests.Timeout as e:
            raise BackendError(UNAVAILABLE, f"timeout after {self.timeout[1]:.1f}s: {url}") from e
        except requests.ConnectionError as e:
            raise BackendError(UNAVAILABLE, f"cannot connect to {url}: {type(e).__name__}") from e
        if resp.status_code in RETRY_STATUS:
            try:  # honour a numeric Retry-After (429 / 503), capped by backoff_max_s
                retry_after = float(resp.headers.get("Retry-After", ""))
            except ValueError:
                retry_after = None
            raise BackendError(UNAVAILABLE, f"HTTP {resp.status_code} from {url}: {resp.text[:200]}", retry_after)
        if resp.status_code in CONFIG_STATUS:
            raise BackendError(CONFIG_ERROR, f"HTTP {resp.status_code} from {url}: {resp.text[:300]}")
        if resp.status_code != 200:
            raise BackendError(HTTP_ERROR, f"HTTP {resp.status_code} from {url}: {resp.text[:300]}")
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            usage = data.get("usage") or {}
            return ChatReply(
                text=text,
                completion_tokens=int(usage.get("completion_tokens", 0)),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                finish_reason=choice.get("finish_reason") or "stop",
            )
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise BackendError(BAD_RESPONSE, f"not a chat-completions reply from {url}: {resp.text[:200]!r}") from e

    def _one(self, r: ChatRequest) -> ChatReply:
        body = self.payload(r)
        t0 = time.perf_counter()
        last: BackendError | None = None
        for attempt in range(self.max_retries + 1):
            try:
                rep = self._post_once(body)
                rep.attempts = attempt + 1
                rep.latency_s = time.perf_counter() - t0
                return rep
            except BackendError as e:
                last = e
                if e.kind not in (UNAVAILABLE, BAD_RESPONSE) or attempt == self.max_retries:
                    break
                wait = self._backoff(attempt)
                if e.retry_after_s is not None:
                    wait = max(wait, min(e.retry_after_s, self.backoff_max_s))
                time.sleep(wait)
        assert last is not None
        return ChatReply(
            text="",
            finish_reason="error",
            error=str(last),
            error_kind=last.kind,
            attempts=attempt + 1,
            latency_s=time.perf_counter() - t0,
        )

    def chat(self, requests_: Sequence[ChatRequest]) -> list[ChatReply]:
        if not requests_:
            return []
        if self.concurrency == 1 or len(requests_) == 1:
            return [self._one(r) for r in requests_]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests_))) as pool:
            return list(pool.map(self._one, requests_))
