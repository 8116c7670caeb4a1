"""VideoMME-format evaluator: question files, subtitles, per-bucket accuracy, bad input, smoke model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.benchmarks import run_videomme_benchmark
from evaluation.fixtures import fixture_oracle
from evaluation.videomme import (evaluate_videomme, find_video, load_questions, read_srt, read_srt_cues,
                                 sample_uniform_frames, subtitles_at, videomme_prompt)
from longvila.errors import InputError


def test_fixture_is_in_the_public_layout(videomme_fixture):
    fx = videomme_fixture
    table = pq.read_table(fx["parquet"])
    for col in ("video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id", "task_type",
                "question", "options", "answer"):
        assert col in table.column_names
    assert pa.types.is_list(table.schema.field("options").type)
    assert len(list(Path(fx["video_dir"]).glob("*.mp4"))) == 6
    assert len(list(Path(fx["subtitle_dir"]).glob("*.srt"))) == 3


def test_load_parquet_json_jsonl_and_nested_agree(videomme_fixture, tmp_path):
    fx = videomme_fixture
    a = load_questions(fx["parquet"], subtitle_dir=fx["subtitle_dir"])
    b = load_questions(fx["json"], subtitle_dir=fx["subtitle_dir"])
    recs = json.loads(Path(fx["json"]).read_text())
    jl = tmp_path / "q.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    c = load_questions(str(jl), subtitle_dir=fx["subtitle_dir"])
    # nested: one entry per video with a "questions" list (the VideoMME repository's JSON)
    nested: dict[str, dict] = {}
    for r in recs:
        v = nested.setdefault(r["video_id"], {k: r[k] for k in ("video_id", "duration", "domain", "sub_category",
                                                                 "videoID")} | {"questions": []})
        v["questions"].append({k: r[k] for k in ("question_id", "task_type", "question", "options", "answer")})
    nj = tmp_path / "nested.json"
    nj.write_text(json.dumps(list(nested.values())))
    d = load_questions(str(nj), subtitle_dir=fx["subtitle_dir"])
    assert len(a) == 9
    for other in (b, c, d):
        assert [(q.question_id, q.answer, q.options, q.duration, q.subtitles) for q in other] == \
               [(q.question_id, q.answer, q.options, q.duration, q.subtitles) for q in a]
    with_subs = [q for q in a if q.subtitles]
    assert len(with_subs) == 6 and all("secret word is" in q.subtitles for q in with_subs)
    assert load_questions(fx["parquet"])[0].subtitles is None  # no subtitle folder: none


def _write(tmp_path, recs, name="q.json"):
    p = tmp_path / name
    p.write_text(json.dumps(recs))
    return str(p)


GOOD = {"video_id": "001", "duration": "short", "question_id": "001-1", "question": "Q?",
        "options": ["A. x", "B. y", "C. z", "D. w"], "answer": "B"}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"answer": "E"}, "is not one of"),
        ({"duration": "huge"}, "duration"),
        ({"options": ["A. only"]}, "fewer than two options"),
        ({"question": ""}, "lacks question"),
        ({"video_id": None}, "lacks video_id"),
        ({"options": ["A. x", "A. y"]}, "repeated option letters"),
    ],
)
def test_bad_question_records_name_file_and_reason(tmp_path, change, reason):
    p = _write(tmp_path, [{**GOOD, **change}])
    with pytest.raises(InputError) as ei:
        load_questions(p)
    assert str(ei.value).startswith(p) and reason in str(ei.value)


def test_bad_question_files(tmp_path):
    with pytest.raises(InputError, match="duplicate question_id"):
        load_questions(_write(tmp_path, [GOOD, GOOD]))
    with pytest.raises(InputError, match="does not exist"):
        load_questions(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"video_id": ')
    with pytest.raises(InputError, match="not JSON"):
        load_questions(str(broken))
    notpq = tmp_path / "x.parquet"
    notpq.write_bytes(b"PAR1 garbage")
    with pytest.raises(InputError, match="parquet"):
        load_questions(str(notpq))
    with pytest.raises(InputError, match="no questions"):
        load_questions(_write(tmp_path, []))
    # lenient forms: answer "(b)", options as a newline string, duration in capitals
    q = load_questions(_write(tmp_path, [{**GOOD, "answer": "(b)", "options": "A. x\nB. y", "duration": "Long"}]))[0]
    assert q.answer == "B" and q.options == ["A. x", "B. y"] and q.duration == "long"


def test_read_srt(tmp_path):
    p = tmp_path / "s.srt"
    p.write_text("\ufeff1\n00:00:01,000 --> 00:00:02,500\n<i>Hello</i> there\nfriend\n\n2\n"
                 "00:00:03,000 --> 00:00:04,000\n{\\an8}Bye.\n", encoding="utf-8")
    assert read_srt(str(p)) == "Hello there friend\nBye."
    assert read_srt_cues(str(p)) == [(1.0, 2.5, "Hello there friend"), (3.0, 4.0, "Bye.")]
    cues = read_srt_cues(str(p))
    assert subtitles_at(cues, [0.5]) == "" and subtitles_at(cues, [1.0, 3.5]) == "Hello there friend\nBye."
    assert subtitles_at(cues, [2.5]) == ""  # end is exclusive


def test_with_subtitles_uses_the_cues_of_the_sampled_frames(videomme_fixture):
    """VideoMME's protocol: only the cues shown at the sampled frames go into the prompt."""
    fx = videomme_fixture
    qs = load_questions(fx["parquet"], subtitle_dir=fx["subtitle_dir"])
    seen = []

    def spy(frames, prompt):
        seen.append(prompt)
        return fixture_oracle(frames, prompt)

    res = evaluate_videomme(spy, qs, fx["video_dir"], num_frames=2, subtitle_selection="frames")
    with_subs = [p for p in seen if p.startswith("This video's subtitles")]
    assert with_subs and all("secret word is" in p and "Listen." not in p for p in with_subs)
    assert res.summary()["with_subtitles"]["overall"]["accuracy"] == 1.0
    seen.clear()
    evaluate_videomme(spy, qs, fx["video_dir"], num_frames=2, subtitle_selection="all")
    assert all("Listen." in p for p in seen if p.startswith("This video's subtitles"))
    with pytest.raises(ValueError):
        evaluate_videomme(spy, qs, fx["video_dir"], subtitle_selection="some")


def test_prompt_format(videomme_fixture):
    q = [q for q in load_questions(videomme_fixture["parquet"], videomme_fixture["subtitle_dir"]) if q.subtitles][0]
    plain = videomme_prompt(q)
    assert plain.startswith("Select the best answer") and plain.endswith("The best answer is:")
    assert all(o in plain for o in q.options) and "subtitles" not in plain
    subs = videomme_prompt(q, with_subtitles=True)
    assert subs.startswith("This video's subtitles are listed below:") and q.subtitles in subs


def test_uniform_frames_and_video_lookup(videomme_fixture):
    qs = load_questions(videomme_fixture["parquet"])
    path = find_video(videomme_fixture["video_dir"], qs[0])
    assert path and path.endswith(f"{qs[0].video_file_id}.mp4")
    frames = sample_uniform_frames(path, 4, size=32)
    assert len(frames) == 4 and frames[0].size == (32, 32)


def test_accuracy_per_bucket_with_a_scripted_answerer(videomme_fixture):
    fx = videomme_fixture
    qs = load_questions(fx["parquet"], subtitle_dir=fx["subtitle_dir"])
    res = evaluate_videomme(fixture_oracle, qs, fx["video_dir"], num_frames=3)
    assert res.modes == ["without_subtitles", "with_subtitles"]
    s = res.summary()
    # colour questions are answered from the frames; subtitle questions only with subtitles
    assert s["without_subtitles"]["overall"] == {"accuracy": pytest.approx(6 / 9), "correct": 6, "total": 9,
                                                 "no_answer": 3}
    assert {d: v["accuracy"] for d, v in s["without_subtitles"]["duration"].items()} == \
           {"long": pytest.approx(2 / 3), "medium": pytest.approx(2 / 3), "short": pytest.approx(2 / 3)}
    assert s["with_subtitles"]["overall"]["accuracy"] == 1.0
    assert all(v["accuracy"] == 1.0 for v in s["with_subtitles"]["duration"].values())
    assert s["without_subtitles"]["task_type"]["Attribute Perception"]["accuracy"] == 1.0
    assert s["without_subtitles"]["task_type"]["Information Synopsis"]["accuracy"] == 0.0
    assert res.accuracy("with_subtitles", duration="short") == 1.0
    assert s["errors"] == 0
    md = res.to_markdown()
    assert "| short | 66.7 (2/3) | 100.0 (3/3) |" in md and "| **overall** | 66.7 (6/9) | 100.0 (9/9) |" in md
    only = evaluate_videomme(fixture_oracle, qs, fx["video_dir"], num_frames=2, subtitles="never")
    assert only.modes == ["without_subtitles"]


def test_missing_and_corrupt_videos_fail_only_their_questions(videomme_fixture, tmp_path):
    fx = videomme_fixture
    vids = tmp_path / "videos"
    shutil.copytree(fx["video_dir"], vids)
    qs = load_questions(fx["parquet"])
    (vids / f"{qs[0].video_file_id}.mp4").unlink()  # missing (video 001: 2 questions)
    (vids / f"{qs[2].video_file_id}.mp4").write_bytes(b"\x00" * 500)  # corrupt (video 002: 1 question)
    res = evaluate_videomme(fixture_oracle, qs, str(vids), num_frames=2)
    errs = res.errors
    assert {r["video_id"] for r in errs} == {"001", "002"} and len(errs) == 3
    assert any("not found" in r["error"] for r in errs) and any(qs[2].video_file_id in r["error"] for r in errs)
    s = res.summary()
    assert s["errors"] == 3 and s["without_subtitles"]["overall"]["total"] == 6
    with pytest.raises(InputError):
        evaluate_videomme(fixture_oracle, qs, str(vids), num_frames=2, strict=True)


def test_smoke_checkpoint_end_to_end(smoke_checkpoint, videomme_fixture, tmp_path, leftovers):
    fx = videomme_fixture
    res = run_videomme_benchmark(smoke_checkpoint, fx["parquet"], fx["video_dir"], str(tmp_path / "out"),
                                 subtitle_dir=fx["subtitle_dir"], num_frames=2, max_new_tokens=3)
    assert len(res.records) == 18 and res.summary()["errors"] == 0
    assert all(isinstance(r["reply"], str) for r in res.records)
    acc = res.summary()["without_subtitles"]["overall"]["accuracy"]
    assert 0.0 <= acc <= 1.0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"]["without_subtitles"]["overall"]["total"] == 9
    assert "| duration |" in (tmp_path / "out" / "summary.md").read_text()
    assert leftovers(tmp_path) == []


def test_option_logit_scoring_always_answers(smoke_runner, videomme_fixture):
    fx = videomme_fixture
    qs = load_questions(fx["parquet"])
    res = evaluate_videomme(smoke_runner, qs, fx["video_dir"], num_frames=2, scoring="option_logits")
    assert res.scoring == "option_logits" and res.summary()["scoring"] == "option_logits"
    for r in res.records:
        assert r["predicted"] in ("A", "B", "C", "D") and set(r["scores"]) == {"A", "B", "C", "D"}
        assert r["predicted"] == max(r["scores"], key=r["scores"].get)
    assert res.summary()["without_subtitles"]["overall"]["no_answer"] == 0
    with pytest.raises(TypeError):
        evaluate_videomme(fixture_oracle, qs, fx["video_dir"], scoring="option_logits")
    with pytest.raises(ValueError):
        evaluate_videomme(fixture_oracle, qs, fx["video_dir"], scoring="vibes")
