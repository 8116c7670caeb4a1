"""Clip captions, summaries and question-answer instructions: policies for bad input and bad replies."""

import json

import pytest

from curation.captioning.annotate import (
    QUESTION_TYPES,
    TimedCaption,
    VideoAnnotator,
    captions_from_table,
    instruction_records,
    specialise_qa_schema,
)
from curation.captioning.captioner import CAPTIONS_SCHEMA, ClipCaptioner, ClipInput, results_to_table
from curation.captioning.openai_http import OpenAIChatBackend
from curation.captioning.types import EMPTY_INPUT, INVALID_OUTPUT, REJECTED, UNAVAILABLE


def _http(srv, model, **kw):
    return OpenAIChatBackend(srv.base_url, model, api_key_env=None, backoff_s=0.02, backoff_max_s=0.05, **kw)


CAPS = [TimedCaption(i, 10.0 * i, 10.0 * i + 10, f"A person walks in room {i} and picks up a red cup.")
        for i in range(3)]


def test_local_captions_table_and_empty_clip(vlm, frames):
    cap = ClipCaptioner(vlm, max_new_tokens=8)
    clips = [ClipInput(0, 0.0, 5.0, frames(3)), ClipInput(1, 5.0, 9.5, []),
             ClipInput(2, 9.5, 14.0, frames(2, (0, 0, 200)))]
    res = cap.caption_clips(clips)
    assert [r.clip_index for r in res] == [0, 1, 2]
    assert res[1].ok is False and res[1].error_kind == EMPTY_INPUT and "no frames" in res[1].error
    for r in (res[0], res[2]):
        assert r.ok and r.caption and r.tokens > 0 and r.model == "smoke-vlm"
        assert r.prompt_version.startswith("clip_caption.v1-")
    table = results_to_table(res)
    assert table.schema == CAPTIONS_SCHEMA and table.num_rows == 3
    assert [c.clip_index for c in captions_from_table(table)] == [0, 2]


def test_wrong_language_caption_is_rejected(srv, frames):
    srv.fault("reply", text="一个人在房间里走路，拿起一个红色的杯子。", count=-1)
    res = ClipCaptioner(_http(srv, "smoke-vlm"), max_new_tokens=8).caption_clips([ClipInput(0, 0, 5, frames(2))])[0]
    assert not res.ok and res.error_kind == REJECTED and "not in the target language" in res.error
    assert res.caption.startswith("一个人")  # kept for inspection


def test_over_long_caption_is_truncated_and_flagged(srv, frames):
    srv.fault("reply", text="A red car drives down a long road " * 20, count=-1)
    captioner = ClipCaptioner(_http(srv, "smoke-vlm"), max_new_tokens=8, max_chars=60)
    res = captioner.caption_clips([ClipInput(0, 0, 5, frames(2))])[0]
    assert res.ok and "truncated" in res.flags and len(res.caption) <= 60 and not res.caption.endswith(" ")


def test_captioning_with_server_down_records_unavailable(unused_port, frames):
    b = OpenAIChatBackend(f"http://127.0.0.1:{unused_port}/v1", "m", api_key_env=None, max_retries=1, backoff_s=0.01)
    res = ClipCaptioner(b).caption_clips([ClipInput(0, 0, 5, frames(1)), ClipInput(1, 5, 9, frames(1))])
    assert all(not r.ok and r.error_kind == UNAVAILABLE for r in res)


def _short_prompts():
    """The v1 prompts with tighter length bounds (keeps the random model's replies short in tests)."""
    from dataclasses import replace

    from curation.captioning.prompts import load_prompt

    summ, qa = load_prompt("video_summary"), load_prompt("video_qa")
    ss = json.loads(json.dumps(summ.schema))
    ss["properties"]["summary"]["maxLength"] = ss["properties"]["title"]["maxLength"] = 40
    qs = json.loads(json.dumps(qa.schema))
    qs["properties"]["qa"]["maxItems"] = 3
    qs["properties"]["qa"]["items"]["properties"]["question"]["maxLength"] = 40
    qs["properties"]["qa"]["items"]["properties"]["answer"]["maxLength"] = 40
    return replace(summ, schema=ss), replace(qa, schema=qs)


def test_local_summary_and_qa_are_schema_valid_with_bounded_times(llm):
    summ, qa = _short_prompts()
    ann = VideoAnnotator(llm, summary_prompt=summ, qa_prompt=qa, summary_max_new_tokens=200,
                         qa_max_new_tokens=400, max_attempts=4)
    s = ann.summarize("vid-0000abcd", CAPS, 30.0)
    assert s["ok"], s["attempt_errors"]
    assert s["summary"] and s["title"] and s["prompt_version"].startswith("video_summary.v1-")
    q = ann.question_answers("vid-0000abcd", CAPS, 30.0, s["summary"])
    assert q["ok"], q["attempt_errors"]
    for item in q["qa"]:
        assert item["question_type"] in QUESTION_TYPES
        assert 0 <= item["start_s"] <= item["end_s"] <= 30
        assert item["question"].strip() and item["answer"].strip()
    recs = instruction_records("vid-0000abcd", s, q, video="data/raw/a.mp4", frames_path="lake/video_frames/x.parquet",
                               duration_s=30.0)
    assert len(recs) == 1 + len(q["qa"])
    assert recs[0]["question_type"] == "Caption" and recs[0]["conversations"][1]["value"] == s["summary"]
    for r in recs:
        assert r["conversations"][0]["from"] == "human" and r["conversations"][0]["value"].startswith("<video>\n")
        assert r["conversations"][1]["from"] == "gpt"
        assert r["video"] == "data/raw/a.mp4" and r["frames"]["layer"] == "video_frames"
    json.dumps(recs)


def test_invalid_json_is_retried_then_recovers(srv):
    srv.fault("invalid_json", count=1)
    ann = VideoAnnotator(_http(srv, "smoke-llm"), summary_max_new_tokens=300, max_attempts=4)
    s = ann.summarize("k", CAPS, 30.0)
    assert s["ok"], s["attempt_errors"]
    assert s["attempts"] >= 2 and "unparseable JSON" in s["attempt_errors"][0]


@pytest.mark.parametrize("reply,needle", [
    ("this is {not valid JSON", "unparseable JSON"),
    ('{"title": "A", "summary": 7}', "schema-invalid at summary"),
    ('{"title": "Une vidéo", "summary": "这是一个关于城市的视频"}', "not in the target language"),
])
def test_persistently_invalid_summary_is_a_failure_record(srv, reply, needle):
    srv.fault("reply", text=reply, count=-1)
    s = VideoAnnotator(_http(srv, "smoke-llm"), max_attempts=2).summarize("vid-x", CAPS, 30.0)
    assert s["ok"] is False and s["error_kind"] == INVALID_OUTPUT and s["attempts"] == 2
    assert needle in s["error"] and "vid-x" in s["error"]


def test_qa_time_spans_outside_video_are_rejected(srv):
    good = {"question_type": "Temporal", "question": "What happens first?", "answer": "A person walks in.",
            "start_s": 0, "end_s": 10}
    bad = dict(good, start_s=20, end_s=5)  # reversed
    srv.fault("reply", text=json.dumps({"qa": [good, bad]}), count=-1)
    q = VideoAnnotator(_http(srv, "smoke-llm"), max_attempts=1).question_answers("k", CAPS, 30.0, "s")
    assert q["ok"] and len(q["qa"]) == 1 and q["qa"][0]["question"] == good["question"]
    assert len(q["rejected"]) == 1 and "outside" in q["rejected"][0]["reason"]
    # a time beyond the duration violates the per-video schema maximum
    srv.fault("reply", text=json.dumps({"qa": [dict(good, end_s=95)]}), count=-1)
    q = VideoAnnotator(_http(srv, "smoke-llm"), max_attempts=1).question_answers("k", CAPS, 30.0, "s")
    assert not q["ok"] and "schema-invalid" in q["error"]


def test_no_usable_captions_is_a_failure_record(llm):
    s = VideoAnnotator(llm).summarize("vid-empty", [], 12.0)
    assert not s["ok"] and s["error_kind"] == EMPTY_INPUT and s["attempts"] == 0


def test_specialised_schema_bounds_timestamps(schema_of):
    s = specialise_qa_schema(schema_of("video_qa"), 41.2)
    props = s["properties"]["qa"]["items"]["properties"]
    assert props["start_s"]["maximum"] == props["end_s"]["maximum"] == 42
    assert schema_of("video_qa")["properties"]["qa"]["items"]["properties"]["end_s"]["maximum"] == 86400


def test_undecodable_frame_fails_only_its_clip(vlm, frames):
    from curation.captioning.types import BAD_INPUT

    clips = [ClipInput(0, 0, 2, frames(2)), ClipInput(1, 2, 4, [b"\xff\xd8 not a jpeg"]), ClipInput(2, 4, 6, frames(1))]
    res = ClipCaptioner(vlm, max_new_tokens=6).caption_clips(clips)
    assert res[0].ok and res[2].ok
    assert not res[1].ok and res[1].error_kind == BAD_INPUT and "UnidentifiedImageError" in res[1].error
