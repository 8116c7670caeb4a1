"""Text-quality rules, data checks and the consolidated SFT dataset (pure functions, no models)."""

import json

import pyarrow as pa
import pytest

from curation.captioning import checks
from curation.captioning.annotate import to_jsonl
from curation.captioning.captioner import CAPTIONS_SCHEMA
from curation.captioning.dataset import build_long_video_sft, instructions_report_path, load_long_video_sft
from curation.captioning.quality import enforce_length, language_problem, near_duplicates, normalise
from longvila import io as lio
from longvila.errors import InputError
from longvila.layout import layer_path


@pytest.mark.parametrize("text,lang,bad", [
    ("A man rides a red bicycle past a café.", "en", False),
    ("Мужчина едет на красном велосипеде.", "en", True),
    ("一个男人骑着红色自行车。", "en", True),
    ("Мужчина едет на красном велосипеде.", "ru", False),
    ("12:30 -- 45 %", "en", True),  # no letters at all
    ("A man (男人) rides a bicycle past the old town hall.", "en", False),  # mostly Latin
])
def test_language_script_check(text, lang, bad):
    assert (language_problem(text, lang) is not None) is bad


def test_enforce_length_cuts_at_word_boundary():
    text, cut = enforce_length("one two three four five six", 15)
    assert cut and text == "one two three" and len(text) <= 15
    assert enforce_length("short", 15) == ("short", False)


def test_near_duplicates():
    texts = ["A dog runs in the park.", "a dog runs in the park!!", "A red car on a road.",
             "A dog runs in the parks.", ""]
    pairs = {(i, j) for i, j, _ in near_duplicates(texts, 0.8)}
    assert (0, 1) in pairs and (0, 3) in pairs and (1, 3) in pairs
    assert not any(2 in p or 4 in p for p in pairs)
    assert normalise(" A  dog, runs! ") == "a dog runs"


def _captions(rows):
    base = {"num_frames": 2, "error": None, "flags": [], "tokens": 3, "model": "m", "prompt_version": "p"}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=CAPTIONS_SCHEMA)


def test_caption_checks():
    t = _captions([
        {"clip_index": 0, "start_s": 0.0, "end_s": 2.0, "caption": "A dog runs.", "ok": True},
        {"clip_index": 1, "start_s": 2.0, "end_s": 4.0, "caption": "a dog runs", "ok": True},
        {"clip_index": 2, "start_s": 4.0, "end_s": 6.0, "caption": "", "ok": False, "error": "empty_input: no frames"},
    ])
    r = checks.every_clip_captioned(t, [0, 1, 2, 3])
    assert not r["passed"] and r["missing"] == [3] and list(r["failed"]) == [2]
    assert checks.no_empty_captions(t)["passed"]
    d = checks.duplicate_captions(t)
    assert not d["passed"] and d["pairs"][0]["clip_a"] == 0 and d["pairs"][0]["clip_b"] == 1


def test_record_checks():
    recs = [{"id": "a", "question_type": "OCR", "frames": {"start_s": 0, "end_s": 5}},
            {"id": "b", "question_type": "Temporal", "frames": {"start_s": 8, "end_s": 3}},
            {"id": "c", "question_type": "Caption", "frames": {"start_s": 0, "end_s": 99}}]
    q = checks.question_types_present(recs)
    assert not q["passed"] and q["counts"]["OCR"] == 1 and "Spatial" in q["absent"] and "OCR" not in q["absent"]
    t = checks.timestamps_in_bounds(recs, 20.0)
    assert [b["id"] for b in t["out_of_bounds"]] == ["b", "c"]


def _rec(key, i, qt):
    return {"id": f"{key}-qa-{i:03d}", "video": key, "video_key": key, "question_type": qt,
            "frames": {"layer": "video_frames", "path": "x", "start_s": 0, "end_s": 1, "duration_s": 2},
            "conversations": [{"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": "A."}]}


def test_sft_dataset_manifest_failures_and_missing(tmp_path):
    storage = str(tmp_path / "lake")
    lio.write_text(layer_path(storage, "instructions", "a-00000001"),
                   to_jsonl([_rec("a", 0, "OCR"), _rec("a", 1, "Action")]))
    lio.write_text(layer_path(storage, "instructions", "b-00000002"), "")
    lio.write_json(instructions_report_path(storage, "b-00000002"), {"ok": False, "error": "b: no valid reply"})
    m = build_long_video_sft(storage, ["b-00000002", "a-00000001", "c-00000003"])
    assert m["num_records"] == 2 and m["num_videos"] == 2 and m["missing"] == ["c-00000003"]
    assert m["failed"] == {"b-00000002": "b: no valid reply"}
    assert m["question_types"]["OCR"] == 1 and m["videos"]["a-00000001"]["num_records"] == 2
    manifest, records = load_long_video_sft(storage)
    assert manifest == json.loads(json.dumps(m)) and [r["id"] for r in records] == ["a-qa-000", "a-qa-001"]
    # a records file that does not match its manifest is refused
    root = tmp_path / "lake" / "datasets" / "long_video_sft"
    (root / manifest["records"]).write_text("{}\n")
    with pytest.raises(InputError, match="sha256"):
        load_long_video_sft(storage)


def test_corrupt_instructions_file_names_the_file(tmp_path):
    storage = str(tmp_path / "lake")
    lio.write_text(layer_path(storage, "instructions", "a-00000001"), '{"id": 1}\nnot json\n')
    with pytest.raises(InputError, match="a-00000001.jsonl.*line 2"):
        build_long_video_sft(storage, ["a-00000001"])


def test_prompt_files_and_errors(tmp_path):
    from curation.captioning.prompts import load_prompt

    p = load_prompt("video_qa")
    assert p.schema["properties"]["qa"]["items"]["properties"]["question_type"]["enum"][-1] == "Temporal"
    assert p.tag.startswith("video_qa.v1-") and len(p.digest) == 64
    with pytest.raises(InputError, match="prompt file not found"):
        load_prompt("video_qa", "v999")
    (tmp_path / "x.v1.txt").write_text("Hello {name}")
    (tmp_path / "x.v1.schema.json").write_text("{broken")
    with pytest.raises(InputError, match="invalid JSON schema"):
        load_prompt("x", "v1", tmp_path)
    (tmp_path / "x.v1.schema.json").unlink()
    with pytest.raises(InputError, match="cannot render"):
        load_prompt("x", "v1", tmp_path).render(other=1)
