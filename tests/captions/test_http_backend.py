"""OpenAI-compatible HTTP backend against a REAL server process on loopback (curation.captioning.server),
including its fault-injection modes, and a port where nothing listens."""

import json
import time

import jsonschema
import requests

from curation.captioning.openai_http import OpenAIChatBackend
from curation.captioning.types import BAD_RESPONSE, CONFIG_ERROR, HTTP_ERROR, UNAVAILABLE, ChatRequest


def _backend(srv, model="smoke-llm", **kw):
    kw.setdefault("backoff_s", 0.05)
    kw.setdefault("backoff_max_s", 0.2)
    kw.setdefault("timeout_s", 30)
    return OpenAIChatBackend(srv.base_url, model, api_key_env=None, **kw)


def _text_req(text="Hello", **kw):
    return ChatRequest(messages=[{"role": "user", "content": text}], max_new_tokens=kw.pop("max_new_tokens", 8), **kw)


def test_images_as_data_urls_and_concurrency(srv, frames):
    b = _backend(srv, "smoke-vlm", concurrency=4)
    def content(i):
        images = [{"type": "image", "image": f} for f in frames(2, (30 * i, 0, 0))]
        return images + [{"type": "text", "text": "Describe."}]

    reqs = [ChatRequest(messages=[{"role": "user", "content": content(i)}], max_new_tokens=6) for i in range(6)]
    body = b.payload(reqs[0])
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    reps = b.chat(reqs)
    assert all(r.ok and r.attempts == 1 and r.completion_tokens > 0 for r in reps), [r.error for r in reps]
    assert srv.stats()["requests"] >= 6


def test_response_format_json_schema_is_enforced_by_server(srv, schema_of):
    schema = schema_of("video_summary")
    schema["properties"]["summary"]["maxLength"] = 40
    rep = _backend(srv).chat([_text_req("Summarise.", max_new_tokens=120, json_schema=schema, schema_name="s")])[0]
    assert rep.ok, rep.error
    jsonschema.validate(json.loads(rep.text), schema)


def test_server_down_is_unavailable_after_retries(unused_port):
    b = OpenAIChatBackend(f"http://127.0.0.1:{unused_port}/v1", "m", api_key_env=None, max_retries=2,
                          backoff_s=0.01, backoff_max_s=0.02)
    t0 = time.monotonic()
    rep = b.chat([_text_req()])[0]
    assert not rep.ok and rep.error_kind == UNAVAILABLE and rep.attempts == 3
    assert "cannot connect" in rep.error and str(unused_port) in rep.error
    assert time.monotonic() - t0 < 10


def test_slow_server_times_out(srv):
    srv.fault("slow", delay_s=3.0, count=-1)
    b = _backend(srv, timeout_s=0.5, max_retries=1)
    t0 = time.monotonic()
    rep = b.chat([_text_req()])[0]
    assert not rep.ok and rep.error_kind == UNAVAILABLE and "timeout" in rep.error and rep.attempts == 2
    assert time.monotonic() - t0 < 3.0


def test_5xx_retried_then_succeeds(srv):
    srv.fault("error", status=503, count=2)
    before = srv.stats()["requests"]
    rep = _backend(srv, max_retries=3).chat([_text_req()])[0]
    assert rep.ok and rep.attempts == 3, rep.error
    assert srv.stats()["requests"] - before == 3


def test_5xx_exhausts_retries(srv):
    srv.fault("error", status=500, count=-1)
    rep = _backend(srv, max_retries=2).chat([_text_req()])[0]
    assert not rep.ok and rep.error_kind == UNAVAILABLE and rep.attempts == 3 and "HTTP 500" in rep.error


def test_4xx_fails_at_once_with_server_message(srv):
    rep = _backend(srv, model="no-such-model").chat([_text_req()])[0]
    assert not rep.ok and rep.error_kind == CONFIG_ERROR and rep.attempts == 1
    assert "HTTP 404" in rep.error and "no-such-model" in rep.error


def test_non_json_body_is_bad_response(srv):
    srv.fault("garbage", count=-1)
    rep = _backend(srv, max_retries=1).chat([_text_req()])[0]
    assert not rep.ok and rep.error_kind == BAD_RESPONSE and rep.attempts == 2


def test_server_rejects_malformed_requests(srv):
    url = f"http://127.0.0.1:{srv.port}/v1/chat/completions"
    r = requests.post(url, data=b"{not json", timeout=5)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    r = requests.post(url, json={"model": "smoke-llm", "messages": []}, timeout=5)
    assert r.status_code == 400
    r = requests.post(url, json={"model": "smoke-vlm", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.invalid/x.jpg"}}]}]}, timeout=5)
    assert r.status_code == 400 and "data: URLs" in r.json()["error"]["message"]
    models = requests.get(f"http://127.0.0.1:{srv.port}/v1/models", timeout=5).json()
    assert {m["id"] for m in models["data"]} == {"smoke-vlm", "smoke-llm"}


def test_undecodable_image_is_a_client_error_not_retried(srv, frames):
    b = _backend(srv, "smoke-vlm", concurrency=2)
    good = ChatRequest(messages=[{"role": "user", "content": [{"type": "image", "image": frames(1)[0]},
                                                              {"type": "text", "text": "Describe."}]}],
                       max_new_tokens=4)
    bad = ChatRequest(messages=[{"role": "user", "content": [{"type": "image", "image": b"\xff\xd8 broken"},
                                                             {"type": "text", "text": "Describe."}]}], max_new_tokens=4)
    r_good, r_bad = b.chat([good, bad])
    assert r_good.ok
    assert not r_bad.ok and r_bad.error_kind == HTTP_ERROR and r_bad.attempts == 1 and "HTTP 400" in r_bad.error


def test_429_retry_after_is_honoured(srv):
    srv.fault("error", status=429, delay_s=0.6, count=1)
    t0 = time.monotonic()
    rep = _backend(srv, max_retries=2, backoff_s=0.01, backoff_max_s=2.0).chat([_text_req()])[0]
    assert rep.ok and rep.attempts == 2
    assert time.monotonic() - t0 >= 0.6
