"""Caption score: judge prompts, reply parsing, retries, invalid replies, aggregation, similarity."""

from __future__ import annotations

import json

import pytest

from evaluation.caption_score import (CRITERIA, SCORE_SCHEMA, CaptionItem, JudgeReplyError, as_judge,
                                      evaluate_captions, judge_prompt, load_references, make_judge,
                                      parse_judge_reply, score_caption)
from evaluation.similarity import bleu, caption_similarity, ngram_f1, rouge_l, tokenize
from longvila.errors import InputError

REF = ("A man in a red jacket walks his dog along a snowy path, then stops to talk with a woman near a "
       "wooden bench while snow keeps falling.")
PARA = ("A man wearing a red coat walks a dog on a snowy trail and later stops to chat with a woman by a "
        "wooden bench as the snow falls.")
UNRELATED = "Two cars race around a sunny desert track while a crowd cheers loudly from the stands."


@pytest.mark.parametrize(
    "reply, score",
    [
        ('{"score": 4, "reason": "mostly right"}', 4),
        ('{"score": "5"}', 5),
        ("```json\n{\"score\": 3, \"reason\": \"ok\"}\n```", 3),
        ("Sure! Here is my evaluation: {'score': 2, 'reason': 'misses the dog'}", 2),
        ('{"Score": 1}', 1),
        ('{"score": 4.0}', 4),
        ("score: 5", 5),
        ('Thinking {"draft": {"score": 9}} final {"score": 3}', 3),  # first top-level object with a score
        ('{"score": 4', 4),  # truncated JSON: the "score: N" text fallback recovers it
        ({"score": 2, "reason": "dict from a structured backend"}, 2),
    ],
)
def test_parse_valid_replies(reply, score):
    out = parse_judge_reply(reply)
    assert out["score"] == score and isinstance(out["reason"], str)


@pytest.mark.parametrize(
    "reply, why",
    [
        ("", "empty"),
        (None, "empty"),
        ("The caption is pretty good.", "no JSON"),
        ('{"reason": "forgot the score"}', "no 'score' field"),
        ('{"score": 0}', "outside"),
        ('{"score": 6}', "outside"),
        ('{"score": -2}', "outside"),
        ('{"score": 4.5}', "not an integer"),
        ('{"score": "four"}', "not an integer"),
        ('{"score": null}', "not a number"),
        ('{"score": true}', "not a number"),
        ('{"score": [4]}', "not a number"),
        ('{"score": ', "no JSON"),  # truncated before the value
    ],
)
def test_parse_invalid_replies(reply, why):
    with pytest.raises(JudgeReplyError, match=why):
        parse_judge_reply(reply)


def test_nested_draft_object_is_not_taken_for_a_score():
    with pytest.raises(JudgeReplyError):
        parse_judge_reply('{"draft": {"score": 3}}')


def test_prompts_name_the_criterion_and_both_captions():
    for c in CRITERIA:
        p = judge_prompt(c, REF, PARA)
        assert REF in p and PARA in p and '"score"' in p and "1" in p and "5" in p
    assert len({judge_prompt(c, REF, PARA) for c in CRITERIA}) == 3
    with pytest.raises(ValueError):
        judge_prompt("fluency", REF, PARA)
    assert SCORE_SCHEMA["properties"]["score"]["minimum"] == 1 and SCORE_SCHEMA["required"] == ["score"]


class ScriptedJudge:
    """Returns scripted replies in order (per call), recording the prompts; an Exception item is raised."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts = []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        r = self.replies.pop(0)
        if isinstance(r, Exception):
            raise r
        return r


def test_retries_then_valid():
    judge = ScriptedJudge([
        "no idea", '{"score": 9}', '{"score": 4}',  # correctness: two invalid, then valid
        '{"score": 3, "reason": "r"}',  # detail
        ConnectionError("server down"), '{"score": 5}',  # context: backend error, then valid
    ])
    out = score_caption(judge, REF, PARA, retries=2)
    assert out["correctness"]["score"] == 4 and out["correctness"]["attempts"] == 3 and out["correctness"]["valid"]
    assert out["detail"]["score"] == 3 and out["detail"]["reason"] == "r" and out["detail"]["attempts"] == 1
    assert out["context"]["score"] == 5 and out["context"]["attempts"] == 2 and out["context"]["error"] is None
    assert len(judge.prompts) == 6 and judge.prompts[0] == judge.prompts[2]  # a retry resends the same prompt


def test_invalid_after_retries_is_recorded_not_raised():
    judge = ScriptedJudge(['{"score": 7}'] * 2 + ['{"score": 2}'] + ["???", "still nothing"] + ['{"score": 3}'])
    out = score_caption(judge, REF, UNRELATED, retries=1)
    assert not out["correctness"]["valid"] and out["correctness"]["score"] is None
    assert "outside" in out["correctness"]["error"] and out["correctness"]["replies"] == ['{"score": 7}'] * 2
    assert out["detail"]["score"] == 2
    assert not out["context"]["valid"] and out["context"]["attempts"] == 2
    assert out["context"]["replies"] == ["???", "still nothing"]
    assert judge.replies == ['{"score": 3}']  # no call beyond the retries


def test_aggregation_excludes_invalid_and_reports_it():
    items = [CaptionItem("v1", REF, PARA), CaptionItem("v2", REF, UNRELATED), CaptionItem("v3", REF, REF)]
    judge = ScriptedJudge([
        '{"score": 4}', '{"score": 4}', '{"score": 5}',  # v1
        '{"score": 1}', "bad", "bad", "bad", '{"score": 2}',  # v2: detail invalid after 3 attempts
        '{"score": 5}', '{"score": 5}', '{"score": 5}',  # v3
    ])
    res = evaluate_captions(items, judge=judge, retries=2, judge_name="scripted")
    m = res.means()
    assert m["correctness"] == pytest.approx((4 + 1 + 5) / 3)
    assert m["detail"] == pytest.approx((4 + 5) / 2)
    assert m["context"] == pytest.approx((5 + 2 + 5) / 3)
    assert m["average"] == pytest.approx((m["correctness"] + m["detail"] + m["context"]) / 3)
    s = res.summary()
    assert s["invalid_judgements"] == 1 and s["judged"] == 3 and s["judge"] == "scripted"
    assert "invalid judgements | 1 / 9" in res.to_markdown()
    sims = {r["video_id"]: r["similarity"]["combined"] for r in res.records}
    assert sims["v3"] == 1.0 > sims["v1"] > sims["v2"]


def test_similarity_only_without_a_judge():
    res = evaluate_captions([CaptionItem("v", REF, PARA)])
    assert res.records[0]["judge"] is None and res.means()["average"] is None
    assert 0 < res.similarity_means()["rouge_l"] < 1


def test_similarity_ordering_identical_paraphrase_unrelated():
    for fn in (rouge_l, bleu, lambda a, b: ngram_f1(a, b, 1)["f1"], lambda a, b: ngram_f1(a, b, 2)["f1"],
               lambda a, b: caption_similarity(a, b)["combined"]):
        same, para, other = fn(REF, REF), fn(PARA, REF), fn(UNRELATED, REF)
        assert same == pytest.approx(1.0)
        assert same > para > other >= 0.0
    assert caption_similarity("", REF)["combined"] == 0.0
    assert tokenize("It's 3 o'clock!") == ["it's", "3", "o'clock"]
    # ROUGE-L is order-sensitive, unigram F1 is not
    shuffled = " ".join(reversed(tokenize(REF)))
    assert ngram_f1(shuffled, REF, 1)["f1"] == pytest.approx(1.0) and rouge_l(shuffled, REF) < 0.3


def test_as_judge_adapters():
    class Chat:  # curation.captioning ChatBackend shape
        model_id = "fake"

        def __init__(self):
            self.requests = []

        def chat(self, requests):
            from curation.captioning.types import ChatReply

            self.requests += list(requests)
            return [ChatReply(text='{"score": 4}') for _ in requests]

    chat = Chat()
    assert parse_judge_reply(as_judge(chat)("p"))["score"] == 4
    assert chat.requests[0].json_schema == SCORE_SCHEMA and chat.requests[0].temperature == 0.0

    class Failing:
        def chat(self, requests):
            from curation.captioning.types import ChatReply

            return [ChatReply(error="refused", error_kind="unavailable") for _ in requests]

    out = score_caption(as_judge(Failing()), REF, PARA, retries=1)
    assert not out["detail"]["valid"] and "unavailable" in out["detail"]["error"]

    class Gen:
        def generate(self, prompt, schema=None):
            assert schema == SCORE_SCHEMA
            return {"score": 3}

    assert as_judge(Gen())("p") == {"score": 3}
    assert as_judge(lambda p: "x")("p") == "x"
    with pytest.raises(TypeError):
        as_judge(42)
    assert make_judge("none") == (None, "")
    with pytest.raises(ValueError):
        make_judge("carrier-pigeon:coo")


def test_load_references(tmp_path):
    p = tmp_path / "refs.jsonl"
    p.write_text(json.dumps({"video_id": "a", "reference": "x", "video": "a.mp4"}) + "\n"
                 + json.dumps({"id": "b", "summary": "y"}) + "\n")
    items = load_references(str(p))
    assert [(i.video_id, i.reference, i.video) for i in items] == [("a", "x", "a.mp4"), ("b", "y", None)]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"video_id": "a"}]))
    with pytest.raises(InputError, match="needs video_id and reference"):
        load_references(str(bad))
    with pytest.raises(InputError, match="does not exist"):
        load_references(str(tmp_path / "none.json"))


def test_captioning_with_the_smoke_checkpoint(smoke_checkpoint, videomme_fixture, tmp_path):
    from evaluation.benchmarks import run_caption_benchmark
    from evaluation.fixtures import make_reference_captions

    refs = make_reference_captions(videomme_fixture)[:2]
    items = [CaptionItem(r["video_id"], r["reference"], video=r["video"]) for r in refs]
    items.append(CaptionItem("missing", "a reference", video=str(tmp_path / "missing.mp4")))
    judge = ScriptedJudge(['{"score": 2}'] * 6)
    res = run_caption_benchmark(smoke_checkpoint, items, str(tmp_path / "out"), judge=judge, num_frames=2,
                                max_new_tokens=6)
    recs = {r["video_id"]: r for r in res.records}
    assert all(isinstance(recs[r["video_id"]]["candidate"], str) for r in refs)
    assert recs["missing"]["error"] and "missing.mp4" in recs["missing"]["error"] and recs["missing"]["judge"] is None
    assert res.means()["correctness"] == 2.0 and res.summary()["judged"] == 2
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"]["videos"] == 3
