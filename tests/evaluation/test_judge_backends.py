"""The caption judge on the captioning layer's real backends: the local transformers LLM (JSON-schema
constrained decoding) and the OpenAI-compatible HTTP client against a loopback server."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from evaluation.caption_score import CRITERIA, as_judge, make_judge, score_caption


@pytest.mark.slow
def test_local_llm_judge_gives_valid_scores(tmp_path_factory):
    from curation.captioning import constrained
    from curation.captioning.smoke_models import ensure_smoke_models

    paths = ensure_smoke_models(str(tmp_path_factory.mktemp("judge_models")))
    judge, name = make_judge(f"local:{paths.llm}")
    assert name.startswith("local:")
    out = score_caption(as_judge(judge), "A red screen.", "A blue screen.", retries=1)
    for c in CRITERIA:
        e = out[c]
        assert (e["valid"] and 1 <= e["score"] <= 5) or (not e["valid"] and e["error"])
    if constrained.available():  # grammar-constrained decoding: the random model's replies are valid JSON
        assert all(out[c]["valid"] for c in CRITERIA)


class ScriptedBackend:
    """A ChatBackend (the server's model interface) answering a fixed score; records the requests."""

    model_id = "scripted-judge"

    def __init__(self):
        self.requests = []

    def chat(self, requests):
        from curation.captioning.types import ChatReply

        self.requests += list(requests)
        return [ChatReply(text='{"score": 4, "reason": "fine"}') for _ in requests]


@pytest.fixture
def judge_server():
    from curation.captioning.server import make_server

    backend = ScriptedBackend()
    srv = make_server({"judge": backend}, host="127.0.0.1", port=0, fault_injection=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield url, backend
    finally:
        srv.shutdown()
        srv.server_close()


def _fault(url, **body):
    req = urllib.request.Request(f"{url}/admin/fault", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def test_openai_compatible_judge_with_retries(judge_server):
    url, backend = judge_server
    judge, name = make_judge(f"openai:{url}/v1#judge")
    assert name == f"openai:{url}/v1#judge"
    fn = as_judge(judge)
    out = score_caption(fn, "A red screen.", "A red screen.", retries=2)
    assert all(out[c]["score"] == 4 and out[c]["attempts"] == 1 for c in CRITERIA)
    # the request carried the JSON schema (structured output) and greedy decoding
    assert backend.requests[0].json_schema["properties"]["score"]["maximum"] == 5
    assert backend.requests[0].temperature == 0.0
    # the server garbles the next two replies: the first criterion needs three attempts
    _fault(url, mode="invalid_json", count=2)
    out = score_caption(fn, "A red screen.", "A blue screen.", retries=2)
    assert out["correctness"]["attempts"] == 3 and out["correctness"]["valid"]
    assert out["detail"]["attempts"] == 1
    # an out-of-range score from the server, then nothing valid within the retries: recorded invalid
    _fault(url, mode="reply", text='{"score": 11}', count=2)
    out = score_caption(fn, "A red screen.", "A blue screen.", retries=1)
    assert not out["correctness"]["valid"] and "outside" in out["correctness"]["error"]
    assert out["detail"]["valid"]
