"""The captioning server's limits, against a real server process on loopback (issue 11, item 4): 401
before any body byte for every route, 413 before reading, bad Content-Length, an image cap, a bounded
worker pool that answers 503 when full, and a read deadline against slowloris clients."""

from __future__ import annotations

import base64
import http.client
import socket
import time

import pytest
import requests

from curation.captioning.openai_http import OpenAIChatBackend
from curation.captioning.types import CONFIG_ERROR, ChatRequest

KEY = "sekret"
AUTH = f"Authorization: Bearer {KEY}\r\n"


@pytest.fixture(scope="module")
def limited(smoke_paths, start_server, tmp_path_factory):
    with start_server(["--model", f"smoke-llm={smoke_paths.llm}"], tmp_path_factory.mktemp("limited"),
                      "--api-key", KEY, "--fault-injection", "--max-body-mb", "1", "--max-images", "2",
                      "--workers", "2", "--queue", "1", "--read-timeout-s", "2", "--idle-timeout-s", "1") as srv:
        yield srv


def _exchange(port: int, head: str, timeout: float = 5.0) -> tuple[int, bytes, bool, float]:
    """Send a request head (and no body); return (status, body, server closed the connection, seconds)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        t0 = time.monotonic()
        s.sendall(head.encode() + b"\r\n")
        resp = http.client.HTTPResponse(s)
        resp.begin()
        body = resp.read()
        seconds = time.monotonic() - t0
        try:
            closed = s.recv(1) == b""
        except ConnectionResetError:
            closed = True
        return resp.status, body, closed, seconds
    finally:
        s.close()


def _head(method: str, path: str, *lines: str) -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{line}\r\n" for line in lines)


def test_every_route_but_health_needs_the_key_and_401_comes_before_the_body(limited):
    big = "Content-Length: 50000000"  # announced, never sent: a 401 must not wait for it
    for head in [_head("POST", "/v1/chat/completions", big), _head("POST", "/admin/fault", big),
                 _head("POST", "/v1/chat/completions", big, "Authorization: Bearer wrong"),
                 _head("POST", "/nowhere", big), _head("GET", "/v1/models"), _head("GET", "/admin/stats")]:
        status, body, closed, secs = _exchange(limited.port, head)
        assert status == 401 and b"invalid API key" in body and secs < 2.0, head
    assert _exchange(limited.port, _head("GET", "/health"))[0] == 200
    ok = requests.get(f"http://127.0.0.1:{limited.port}/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                      timeout=5)
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "smoke-llm"
    rep = OpenAIChatBackend(limited.base_url, "smoke-llm", api_key="wrong", api_key_env=None).chat(
        [ChatRequest(messages=[{"role": "user", "content": "hi"}], max_new_tokens=4)])[0]
    assert not rep.ok and rep.error_kind == CONFIG_ERROR and rep.attempts == 1 and "HTTP 401" in rep.error


def test_oversize_body_gets_413_before_it_is_read(limited):
    status, body, closed, secs = _exchange(limited.port, _head("POST", "/v1/chat/completions", AUTH.strip(),
                                                                "Content-Length: 10000000000"))
    assert status == 413 and b"exceeds the limit of 1048576 bytes" in body and closed and secs < 2.0


@pytest.mark.parametrize("lines, status", [
    (["Content-Length: -1"], 400), (["Content-Length: 12abc"], 400), (["Content-Length: \uff11\uff12"], 400),
    (["Content-Length: 5", "Content-Length: 6"], 400), ([], 411), (["Transfer-Encoding: chunked"], 411),
])
def test_bad_content_length_is_refused(limited, lines, status):
    code, _, closed, secs = _exchange(limited.port, _head("POST", "/v1/chat/completions", AUTH.strip(), *lines))
    assert code == status and closed and secs < 2.0


def test_images_per_request_are_capped(limited, frames):
    url = "data:image/jpeg;base64," + base64.b64encode(frames(1)[0]).decode()
    body = {"model": "smoke-llm", "max_tokens": 4, "messages": [{"role": "user", "content": [
        *[{"type": "image_url", "image_url": {"url": url}}] * 3, {"type": "text", "text": "?"}]}]}
    r = requests.post(f"{limited.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=10)
    assert r.status_code == 400 and "too many images: 3 > the server's limit of 2" in r.json()["error"]["message"]


def test_slowloris_is_cut_at_the_read_deadline_while_others_are_served(limited):
    s = socket.create_connection(("127.0.0.1", limited.port), timeout=5)
    t0 = time.monotonic()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    closed_after = None
    try:
        for i in range(20):  # one header line every 0.4 s: never idle for the 1 s idle timeout
            time.sleep(0.4)
            if i == 1:
                assert requests.get(f"http://127.0.0.1:{limited.port}/health", timeout=2).status_code == 200
            s.sendall(f"X-Drip-{i}: y\r\n".encode())
    except OSError:  # broken pipe / reset: the server closed the connection
        closed_after = time.monotonic() - t0
    finally:
        s.close()
    assert closed_after is not None and closed_after < 4.0  # read deadline 2 s (+ one drip + watchdog tick)


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_full_pool_answers_503_at_once_then_recovers_and_never_adds_threads(limited):
    idle = [socket.create_connection(("127.0.0.1", limited.port), timeout=5) for _ in range(3)]  # 2 busy + 1 queued
    try:
        t0 = time.monotonic()
        status, body, closed, secs = _exchange(limited.port, _head("GET", "/health"))
        assert status == 503 and closed and secs < 1.0 and b"server busy" in body
        # a client retries through the overload, until the idle connections time out (1 s)
        rep = OpenAIChatBackend(limited.base_url, "smoke-llm", api_key=KEY, api_key_env=None, max_retries=6,
                                backoff_s=0.5, backoff_max_s=1.0).chat(
            [ChatRequest(messages=[{"role": "user", "content": "hi"}], max_new_tokens=4)])[0]
        assert rep.ok and (rep.attempts > 1 or time.monotonic() - t0 > 1.0), rep.error
        before = _threads(limited.proc.pid)  # after the first generation (torch starts its threads then)
        many = [socket.create_connection(("127.0.0.1", limited.port), timeout=5) for _ in range(20)]
        time.sleep(0.3)
        assert _threads(limited.proc.pid) == before  # no thread per connection
        for s in many:
            s.close()
    finally:
        for s in idle:
            s.close()
