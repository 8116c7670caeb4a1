"""A small, real OpenAI-compatible chat-completions server for local `transformers` models.

    python -m curation.captioning.server --model smoke-vlm=/path/vlm --model smoke-llm=/path/llm \
        --host 127.0.0.1 --port 8008 [--batch-size 8] [--api-key KEY] [--fault-injection] [limits, below]

Endpoints: `POST /v1/chat/completions` (text + base64 data-URL images, `max_tokens`, `temperature`,
`seed`, `response_format` `json_schema` / `json_object` decoded under a grammar), `GET /v1/models`,
`GET /health`. Concurrent requests for the same model are gathered into batches (up to
`--batch-size`, waiting at most `--batch-wait-ms`) and run as one `generate` call.

With `--fault-injection`, `POST /admin/fault` sets a failure mode for tests and `GET /admin/stats`
reports request counts: `{"mode": "none" | "slow" | "error" | "invalid_json" | "garbage" | "reply",
"count": N (-1 = until reset), "delay_s": S, "status": 500, "text": "..."}`: `slow` waits S seconds
before answering, `error` answers HTTP `status` (with `Retry-After: S` when `delay_s` is set),
`garbage` answers a non-JSON body, `invalid_json` and `reply` replace the model's text with
unparseable JSON or with `text` (e.g. a reply in another language or one that breaks the schema), for
the next N requests. With `--api-key` these routes need the key too.

Why not `transformers serve` (checked with transformers 5.24): it needs the `serving` extra
(fastapi, openai, ...; pip-installable), and its chat-completions handler rejects requests that carry
`response_format` (listed in `UNUSED_CHAT_COMPLETION_FIELDS` in
`transformers/cli/serving/chat_completion.py`), so it cannot serve schema-constrained replies; it also
has no fault injection for tests. The client (`openai_http.OpenAIChatBackend`) works against any
server that implements the API, vLLM and SGLang included.

Limits (`ServerLimits`, each a command-line flag) keep one client from exhausting the server:

| fault | answer |
|---|---|
| no/wrong `Authorization: Bearer KEY` (`--api-key`), any route but `GET /health` | 401, no body byte read, closed |
| `Content-Length` above `--max-body-mb` | 413 before any body byte is read; connection closed |
| negative, non-numeric or conflicting `Content-Length` | 400; missing (or chunked): 411; closed |
| more than `--max-images` images in one request | 400 naming the limit |
| all `--workers` busy and `--queue` connections waiting | 503 with `Retry-After: 1` at once |
| head and body not received within `--read-timeout-s` (slowloris) | connection closed |
| no byte for `--idle-timeout-s` (idle keep-alive, stalled client) | connection closed |
| generation not finished within `--request-timeout-s` | 504 |

Connections are served by a fixed pool of worker threads (never a thread per connection); while
connections wait for a worker, answers close their connection instead of keeping it alive; one
watchdog thread closes connections that overrun their read deadline (queue time included).
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import queue
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
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

    def submit(self, req: ChatRequest, timeout_s: float):
        box: dict = {}
        ev = threading.Event()
        self.q.put((req, box, ev))
        if not ev.wait(timeout_s):
            raise TimeoutError(f"generation did not finish within {timeout_s:g} s")
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


def parse_request(body: dict, max_images: int | None = None) -> tuple[str, ChatRequest]:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise ValueError("'messages' must be a non-empty list")
    parts = [p for m in body["messages"] if isinstance(m.get("content"), list) for p in m["content"]]
    n_images = sum(1 for p in parts if isinstance(p, dict) and p.get("type") == "image_url")
    if max_images is not None and n_images > max_images:
        raise ValueError(f"too many images: {n_images} > the server's limit of {max_images} per request")
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


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one client can make the server hold (see the module docstring)."""

    max_body_bytes: int = 32 << 20
    max_images: int = 64
    workers: int = 16
    queue: int = 64
    read_timeout_s: float = 30.0
    idle_timeout_s: float = 10.0
    request_timeout_s: float = 600.0

    def __post_init__(self):
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"server limit {name} must be > 0, got {value!r}")


_CHAT_ROUTES = ("/v1/chat/completions", "/chat/completions")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


def _busy_response() -> bytes:
    body = json.dumps({"error": {"message": "server busy: all workers and queue slots are taken",
                                 "type": "server_error", "code": 503}}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class _Watchdog:
    """One thread that closes the connections whose request has not fully arrived by its deadline."""

    def __init__(self):
        self._lock = threading.Lock()
        self._due: dict[socket.socket, float] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="read-watchdog").start()

    def watch(self, sock: socket.socket, seconds: float) -> None:
        """Close `sock` in `seconds` unless released first (a deadline already running is kept)."""
        with self._lock:
            self._due.setdefault(sock, time.monotonic() + seconds)

    def release(self, sock: socket.socket) -> None:
        with self._lock:
            self._due.pop(sock, None)

    def close(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [s for s, due in self._due.items() if due <= now]
                for s in late:
                    del self._due[s]
            for s in late:
                try:
                    s.shutdown(socket.SHUT_RDWR)  # the blocked read returns: the handler ends
                except OSError:
                    pass


class BoundedHTTPServer(HTTPServer):
    """An HTTPServer whose connections are served by `limits.workers` threads; at most `limits.queue`
    more wait, and a connection beyond that gets an immediate 503 (never a new thread)."""

    def __init__(self, address, handler, limits: ServerLimits):
        self.limits = limits
        self.watchdog = _Watchdog()
        self._slots = threading.BoundedSemaphore(limits.workers + limits.queue)
        self._pending: queue.Queue = queue.Queue()
        super().__init__(address, handler)
        self._pool = [threading.Thread(target=self._work, daemon=True, name=f"http-worker-{i}")
                      for i in range(limits.workers)]
        for t in self._pool:
            t.start()

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_busy_response())
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self.watchdog.watch(request, self.limits.read_timeout_s)  # time waiting in the queue counts
        self._pending.put((request, client_address))

    def saturated(self) -> bool:
        """Connections are waiting for a worker (answers then close theirs instead of keeping it alive)."""
        return not self._pending.empty()

    def _work(self):
        while (item := self._pending.get()) is not None:
            request, address = item
            try:
                self.finish_request(request, address)
            except Exception:  # noqa: BLE001 - one connection's failure never stops the worker
                self.handle_error(request, address)
            finally:
                self.watchdog.release(request)
                self.shutdown_request(request)
                self._slots.release()

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # a client that went away is not news
            super().handle_error(request, client_address)

    def server_close(self):
        super().server_close()
        self.watchdog.close()
        for _ in self._pool:
            self._pending.put(None)


def _completion(name: str, rep, text: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": rep.finish_reason}],
        "usage": {"prompt_tokens": rep.prompt_tokens, "completion_tokens": rep.completion_tokens,
                  "total_tokens": rep.prompt_tokens + rep.completion_tokens},
    }


def make_server(models: dict[str, Any], host: str = "127.0.0.1", port: int = 0, *, batch_size: int = 8,
                batch_wait_s: float = 0.01, api_key: str | None = None, fault_injection: bool = False,
                limits: ServerLimits | None = None) -> BoundedHTTPServer:
    """Build (not start) a BoundedHTTPServer serving `models` ({name: ChatBackend})."""
    limits = limits or ServerLimits()
    batchers = {name: _Batcher(b, batch_size, batch_wait_s) for name, b in models.items()}
    fault = _Fault()
    expected_auth = f"Bearer {api_key}".encode() if api_key else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = limits.idle_timeout_s  # per read: an idle keep-alive connection is closed

        def log_message(self, fmt, *args):  # quiet by default
            return

        def handle_one_request(self):
            # the whole request (head and body) must arrive within read_timeout_s of its connection's
            # accept (first request) or of the previous answer (keep-alive): no slowloris holds a worker
            self.server.watchdog.watch(self.connection, limits.read_timeout_s)
            super().handle_one_request()

        def _send(self, status: int, obj: Any = None, raw: bytes | None = None, headers=None):
            data = raw if raw is not None else json.dumps(obj).encode("utf-8")
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json" if raw is None else "text/html")
            self.send_header("Content-Length", str(len(data)))
            if self.server.saturated():  # an idle keep-alive connection must not hold a worker others wait for
                self.close_connection = True
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, type_: str = "invalid_request_error", headers=None):
            self._send(status, {"error": {"message": message, "type": type_, "code": status}}, headers=headers)

        def _refuse(self, status: int, message: str, type_: str = "invalid_request_error") -> None:
            """Answer without reading the body, and close: an unread body must never be parsed as the
            next request of this connection."""
            self.close_connection = True
            self._error(status, message, type_)

        def _authorized(self) -> bool:
            got = self.headers.get("Authorization", "").encode()
            return expected_auth is None or hmac.compare_digest(got, expected_auth)

        def _read_body(self) -> bytes | None:
            """The request body, or None once a refusal has been sent (nothing of the body read)."""
            if self.headers.get("Transfer-Encoding"):
                return self._refuse(411, "send a Content-Length (chunked request bodies are not accepted)")
            values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
            if not values:
                return self._refuse(411, "Content-Length required")
            if len(values) != 1 or not _CONTENT_LENGTH.fullmatch(next(iter(values))):
                return self._refuse(400, f"invalid Content-Length {sorted(values)}")
            n = int(values.pop())
            if n > limits.max_body_bytes:
                return self._refuse(413, f"request body of {n} bytes exceeds the limit of "
                                         f"{limits.max_body_bytes} bytes")
            data = self.rfile.read(n)
            if len(data) < n:  # the client went away (or the watchdog closed a too-slow upload)
                self.close_connection = True
                return None
            self.server.watchdog.release(self.connection)
            return data

        def do_GET(self):
            self.server.watchdog.release(self.connection)
            if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
                self.close_connection = True  # a GET body is never read
            if self.path == "/health":
                return self._send(200, {"status": "ok"})
            if not self._authorized():
                return self._refuse(401, "invalid API key", "authentication_error")
            if self.path == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in models]})
            if self.path == "/admin/stats" and fault_injection:
                return self._send(200, {"requests": fault.requests, "mode": fault.mode})
            return self._error(404, f"no route {self.path}")

        def do_POST(self):
            if not self._authorized():
                return self._refuse(401, "invalid API key", "authentication_error")
            admin = self.path == "/admin/fault" and fault_injection
            if not admin and self.path not in _CHAT_ROUTES:
                return self._refuse(404, f"no route {self.path}")
            raw = self._read_body()
            if raw is None:
                return None
            try:
                body = json.loads(raw or b"null")
            except (ValueError, UnicodeDecodeError):
                return self._error(400, "request body is not JSON")
            if admin:
                try:
                    fault.set(body if isinstance(body, dict) else {})
                except (TypeError, ValueError) as e:
                    return self._error(400, f"bad fault spec: {e}")
                return self._send(200, {"ok": True})
            return self._chat(body)

        def _chat(self, body):
            mode, delay, status, fixed = fault.take()
            if mode == "slow":
                time.sleep(delay)
            elif mode == "error":
                extra = {"Retry-After": f"{delay:g}"} if delay else None
                return self._error(status, "injected failure", "server_error", headers=extra)
            elif mode == "garbage":
                return self._send(200, raw=b"<html>502 bad gateway</html>")
            try:
                name, req = parse_request(body, limits.max_images)
            except (ValueError, TypeError, AttributeError) as e:
                return self._error(400, str(e))
            if name not in batchers:
                return self._error(404, f"model {name!r} not served here; have {sorted(models)}", "not_found_error")
            try:
                rep = batchers[name].submit(req, limits.request_timeout_s)
            except TimeoutError as e:
                return self._error(504, str(e), "server_error")
            except Exception as e:  # noqa: BLE001
                return self._error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
            if not rep.ok:  # the request itself could not be processed (e.g. an undecodable image)
                return self._error(400, f"{rep.error_kind}: {rep.error}")
            text = {"invalid_json": "this is {not valid JSON", "reply": fixed}.get(mode, rep.text)
            return self._send(200, _completion(name, rep, text))

    return BoundedHTTPServer((host, port), Handler, limits)


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
    d = ServerLimits()
    ap.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / (1 << 20), help="413 above this")
    ap.add_argument("--max-images", type=int, default=d.max_images, help="images per request")
    ap.add_argument("--workers", type=int, default=d.workers, help="threads serving connections")
    ap.add_argument("--queue", type=int, default=d.queue, help="connections waiting for a worker; 503 beyond")
    ap.add_argument("--read-timeout-s", type=float, default=d.read_timeout_s, help="to receive a whole request")
    ap.add_argument("--idle-timeout-s", type=float, default=d.idle_timeout_s, help="per read on a connection")
    ap.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s, help="for a generation")
    a = ap.parse_args(argv)
    limits = ServerLimits(max_body_bytes=int(a.max_body_mb * (1 << 20)), max_images=a.max_images,
                          workers=a.workers, queue=a.queue, read_timeout_s=a.read_timeout_s,
                          idle_timeout_s=a.idle_timeout_s, request_timeout_s=a.request_timeout_s)
    from .local import LocalChatBackend

    models = {}
    for spec in a.model:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"--model expects NAME=PATH, got {spec!r}")
        models[name] = LocalChatBackend(path, batch_size=a.batch_size, device=a.device, model_id=name,
                                        num_threads=a.threads)
    srv = make_server(models, a.host, a.port, batch_size=a.batch_size, batch_wait_s=a.batch_wait_ms / 1000,
                      api_key=a.api_key, fault_injection=a.fault_injection, limits=limits)
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
