"""A small, real OpenAI-compatible chat-completions server for local `transformers` models.

    python -m curation.captioning.server --model smoke-vlm=/path/vlm --model smoke-llm=/path/llm \
        --host 127.0.0.1 --port 8008 [--batch-size 8] [--api-key KEY] [--fault-injection]

Endpoints: `POST /v1/chat/completions` (text + base64 data-URL images, `max_tokens`, `temperature`,
`seed`, `response_format` `json_schema` / `json_object` decoded under a grammar), `GET /v1/models`,
`GET /health`. Concurrent requests for the same model are gathered into batches (up to
`--batch-size`, waiting at most `--batch-wait-ms`) and run as one `generate` call.

With `--fault-injection`, `POST /admin/fault` sets a failure mode for tests and `GET /admin/stats`
reports request counts: `{"mode": "none" | "slow" | "error" | "invalid_json" | "garbage" | "reply",
"count": N (-1 = until reset), "delay_s": S, "status": 500, "text": "..."}`: `slow` waits S seconds
before answering, `error` answers HTTP `status` (with `Retry-After: S` when `delay_s` is set), `garbage` answers a non-JSON body, `invalid_json`
and `reply` replace the model's text with unparseable JSON or with `text` (e.g. a reply in another
language or one that breaks the schema), for the next N requests.

Why not `transformers serve` (checked with transformers 5.24): it needs the `serving` extra
(fastapi, openai, ...; pip-installable), and its chat-completions handler rejects requests that carry
`response_format` (listed in `UNUSED_CHAT_COMPLETION_FIELDS` in
`transformers/cli/serving/chat_completion.py`), so it cannot serve schema-constrained replies; it also
has no fault injection for tests. The client (`openai_http.OpenAIChatBackend`) works against any
server that implements the API, vLLM and SGLang included.
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .types import ChatRequest


class _Batcher:
    """Gathers concurrent requests for one model into batches for one generate call."""

    def __init__(self, backend, batch_size: int, wait_s: float):
        self.backend = backend
        self.batch_size = batch_size
        self.wait_s = wait_s
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, req: ChatRequest):
        box: dict = {}
        ev = threading.Event()
        self.q.put((req, box, ev))
        ev.wait()
        if "error" in box:
            raise box["error"]
        return box["reply"]

    def _loop(self):
        while True:
            items = [self.q.get()]
            deadline = time.monotonic() + self.wait_s
            while len(items) < self.batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    items.append(self.q.get(timeout=left))
                except queue.Empty:
                    break
            try:
                replies = self.backend.chat([it[0] for it in items])
                for (_, box, ev), rep in zip(items, replies):
                    box["reply"] = rep
                    ev.set()
            except Exception as e:  # noqa: BLE001 - reported to each waiting request
                for _, box, ev in items:
                    box["error"] = e
                    ev.set()


class _Fault:
    def __init__(self):
        self.lock = threading.Lock()
        self.mode = "none"
        self.count = 0
        self.delay_s = 0.0
        self.status = 500
        self.text = ""
        self.requests = 0

    def set(self, spec: dict):
        with self.lock:
            self.mode = spec.get("mode", "none")
            self.count = int(spec.get("count", -1))
            self.delay_s = float(spec.get("delay_s", 0.0))
            self.status = int(spec.get("status", 500))
            self.text = str(spec.get("text", ""))

    def take(self) -> tuple[str, float, int, str]:
        """Count a request and return the fault that applies to it."""
        with self.lock:
            self.requests += 1
            if self.mode == "none" or self.count == 0:
                return "none", 0.0, 200, ""
            if self.count > 0:
                self.count -= 1
            return self.mode, self.delay_s, self.status, self.text


def _decode_part(p: dict) -> dict:
    t = p.get("type")
    if t == "text":
        return {"type": "text", "text": str(p.get("text", ""))}
    if t == "image_url":
        url = (p.get("image_url") or {}).get("url", "")
        if not url.startswith("data:") or ";base64," not in url:
            raise ValueError("only base64 data: URLs are accepted for images")
        return {"type": "image", "image": base64.b64decode(url.split(";base64,", 1)[1], validate=True)}
    raise ValueError(f"unsupported content part type {t!r}")


def parse_request(body: dict) -> tuple[str, ChatRequest]:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise ValueError("'messages' must be a non-empty list")
    msgs = []
    for m in body["messages"]:
        c = m.get("content")
        if isinstance(c, list):
            c = [_decode_part(p) for p in c]
        elif not isinstance(c, str):
            raise ValueError("message content must be a string or a list of parts")
        msgs.append({"role": str(m.get("role", "user")), "content": c})
    schema = None
    rf = body.get("response_format")
    if rf:
        if rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise ValueError("response_format.json_schema.schema must be an object")
        elif rf.get("type") == "json_object":
            schema = {"type": "object"}
        elif rf.get("type") != "text":
            raise ValueError(f"unsupported response_format type {rf.get('type')!r}")
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 64)
    if not 1 <= max_tokens <= 32768:
        raise ValueError("max_tokens out of range")
    req = ChatRequest(
        messages=msgs,
        max_new_tokens=max_tokens,
        json_schema=schema,
        temperature=float(body.get("temperature") or 0.0),
        seed=body.get("seed"),
    )
    return str(body.get("model", "")), req


def make_server(models: dict[str, Any], host: str = "127.0.0.1", port: int = 0, *, batch_size: int = 8,
                batch_wait_s: float = 0.01, api_key: str | None = None, fault_injection: bool = False):
    """Build (not start) a ThreadingHTTPServer serving `models` ({name: ChatBackend})."""
    batchers = {name: _Batcher(b, batch_size, batch_wait_s) for name, b in models.items()}
    fault = _Fault()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet by default
            return

        def _send(self, status: int, obj: Any = None, raw: bytes | None = None, headers=None):
            data = raw if raw is not None else json.dumps(obj).encode("utf-8")
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json" if raw is None else "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, type_: str = "invalid_request_error", headers=None):
            self._send(status, {"error": {"message": message, "type": type_, "code": status}}, headers=headers)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"null")

        def do_GET(self):
            if self.path == "/health":
                return self._send(200, {"status": "ok"})
            if self.path == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in models]})
            if self.path == "/admin/stats" and fault_injection:
                return self._send(200, {"requests": fault.requests, "mode": fault.mode})
            return self._error(404, f"no route {self.path}")

        def do_POST(self):
            try:
                body = self._body()
            except (ValueError, UnicodeDecodeError):
                return self._error(400, "request body is not JSON")
            if self.path == "/admin/fault" and fault_injection:
                fault.set(body or {})
                return self._send(200, {"ok": True})
            if self.path not in ("/v1/chat/completions", "/chat/completions"):
                return self._error(404, f"no route {self.path}")
            mode, delay, status, fixed = fault.take()
            if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
                return self._error(401, "invalid API key", "authentication_error")
            if mode == "slow":
                time.sleep(delay)
            elif mode == "error":
                extra = {"Retry-After": f"{delay:g}"} if delay else None
                return self._error(status, "injected failure", "server_error", headers=extra)
            elif mode == "garbage":
                return self._send(200, raw=b"<html>502 bad gateway</html>")
            try:
                name, req = parse_request(body)
            except (ValueError, TypeError, AttributeError) as e:
                return self._error(400, str(e))
            if name not in batchers:
                return self._error(404, f"model {name!r} not served here; have {sorted(models)}", "not_found_error")
            try:
                rep = batchers[name].submit(req)
            except Exception as e:  # noqa: BLE001
                return self._error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
            if not rep.ok:  # the request itself could not be processed (e.g. an undecodable image)
                return self._error(400, f"{rep.error_kind}: {rep.error}")
            text = {"invalid_json": "this is {not valid JSON", "reply": fixed}.get(mode, rep.text)
            return self._send(
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": name,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": rep.finish_reason}
                    ],
                    "usage": {
                        "prompt_tokens": rep.prompt_tokens,
                        "completion_tokens": rep.completion_tokens,
                        "total_tokens": rep.prompt_tokens + rep.completion_tokens,
                    },
                },
            )

    srv = ThreadingHTTPServer((host, port), Handler)
    srv.daemon_threads = True
    return srv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH (repeatable)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8008, help="0 = any free port (printed)")
    ap.add_argument("--port-file", help="write the bound port here once ready")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads while generating")
    ap.add_argument("--fault-injection", action="store_true")
    a = ap.parse_args(argv)
    from .local import LocalChatBackend

    models = {}
    for spec in a.model:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"--model expects NAME=PATH, got {spec!r}")
        models[name] = LocalChatBackend(path, batch_size=a.batch_size, device=a.device, model_id=name,
                                        num_threads=a.threads)
    srv = make_server(models, a.host, a.port, batch_size=a.batch_size, batch_wait_s=a.batch_wait_ms / 1000,
                      api_key=a.api_key, fault_injection=a.fault_injection)
    port = srv.server_address[1]
    if a.port_file:
        from longvila.io import write_text

        write_text(a.port_file, f"{port}\n")
    print(f"READY http://{a.host}:{port}/v1", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
