"""The curriculum's stage data: recipe data options, short QA on annotated on-screen text, caption share,
passkey samples mixed in (digits, fill), and V-NIAH-style retrieval samples with a text-free haystack."""

import json

import pytest

from longvila import io as lio
from training.data.build import OCR_QUESTION, build_stage_dataset
from training.data.options import DataOptions
from training.data.records import read_records
from training.recipes import RecipeError, load_recipe, parse_recipe

from .conftest import write_annotated_video

KEY = "lesson-00000001"


def _stage(recipe_stage, **options):
    import dataclasses

    data = dataclasses.replace(recipe_stage.data, options=DataOptions(**options))
    return dataclasses.replace(recipe_stage, data=data)


def test_data_options_are_validated_when_the_recipe_loads():
    base = {"name": "r", "model_profile": "smoke", "stages": {
        n: {"trainable": ["llm"], "data": {"kind": "passkey"}, "max_length": 64} for n in
        ("stage1_alignment", "stage2_pretraining", "stage3_short_sft", "stage4_context_extension", "stage5_long_sft")}}
    for bad, why in (({"caption_shar": 1}, "unknown option"), ({"caption_share": 2.0}, "outside"),
                     ({"frame_samples": 1.5}, "expected a int"), ({"retrieval_frames": [3, 2]}, "min <= max")):
        d = json.loads(json.dumps(base))
        d["stages"]["stage3_short_sft"]["data"]["options"] = bad
        with pytest.raises(RecipeError) as e:
            parse_recipe(d, "r.yaml")
        assert "stages.stage3_short_sft.data.options" in str(e.value) and why in str(e.value)
    smoke = load_recipe("smoke")
    assert smoke.stage(5).data.options.retrieval_samples > 0 and smoke.stage(4).data.options.passkey_digits == 1


def test_caption_and_qa_adds_short_qa_on_the_on_screen_text(tmp_path):
    storage = str(tmp_path)
    write_annotated_video(storage, KEY)
    st = load_recipe("smoke").stage(3)
    man = build_stage_dataset(str(tmp_path / "all"), _stage(st, frame_samples=2), storage=storage, video_keys=[KEY])
    recs = read_records(str(tmp_path / "all"))
    text = [r for r in recs if json.loads(r["meta"]).get("question") == "text"]
    assert len(text) == 2 * (1 + 2)  # two clips with text: one clip sample + two single-frame samples each
    answers = sorted({json.loads(r["conversations"])[1]["value"] for r in text})
    assert answers == ["4", "9"] and all(json.loads(r["conversations"])[0]["value"] == OCR_QUESTION for r in text)
    assert sorted(len(r["frames"]) for r in text) == [1, 1, 1, 1, 4, 4]
    captions = [r for r in recs if r["kind"] == "caption"]
    assert len(captions) == 3 and man["num_samples"] == len(recs)
    build_stage_dataset(str(tmp_path / "none"), _stage(st, caption_share=0.0), storage=storage, video_keys=[KEY])
    only_qa = read_records(str(tmp_path / "none"))
    assert {r["kind"] for r in only_qa} == {"qa"} and len(only_qa) == 2


def test_passkey_samples_mixed_in_with_digits_and_fill(tmp_path, processor):
    from training.data.stages import build_rows

    storage = str(tmp_path)
    write_annotated_video(storage, KEY)
    st = _stage(load_recipe("smoke").stage(3), passkey_samples=12, passkey_digits=1, passkey_min_fill=0.5)
    man = build_stage_dataset(str(tmp_path / "ds"), st, storage=storage, video_keys=[KEY])
    recs = read_records(str(tmp_path / "ds"))
    pk = [json.loads(r["meta"]) for r in recs if r["kind"] == "passkey"]
    assert len(pk) == 12 and all(len(m["passkey"]) == 1 and 0.5 <= m["fill"] <= 1.0 for m in pk)
    assert {"generator": "passkey", "seed": 0, "num_samples": 12} in man["inputs"]
    rows, rep = build_rows([r for r in recs if r["kind"] == "passkey"], processor, 256, 0, packing=False)
    lengths = sorted(int(r.input_ids.numel()) for r in rows)
    assert rep.used == 12 and lengths[-1] <= 256 and lengths[0] < 200  # fills vary between half and all of 256


def test_retrieval_samples_use_a_text_free_haystack_and_the_benchmark_prompt(tmp_path):
    from evaluation.niah import DIGIT_QUESTION, niah_prompt

    storage = str(tmp_path)
    write_annotated_video(storage, KEY)
    st = _stage(load_recipe("smoke").stage(5), retrieval_samples=40, retrieval_frames=(2, 5), single_frame_share=0.25,
                needle_size=32)
    man = build_stage_dataset(str(tmp_path / "ds"), st, storage=storage, video_keys=[KEY])
    recs = read_records(str(tmp_path / "ds"))
    assert len(recs) == 40 and {r["kind"] for r in recs} == {"retrieval"}
    hay = [i for i in man["inputs"] if i.get("video_key") == KEY][0]
    assert hay["num_video_frames"] == 6 and hay["haystack_frames"] == 2  # only the frames at 2.75 s and 3.25 s (clip 1)
    from longvila import layout
    from longvila.lineage_table import find_video, read_table

    row = find_video(read_table(str(tmp_path / "ds" / man["lineage"]["table"]), man["lineage"]["sha256"]), KEY)
    assert row["video_frames"] == lio.sha256_file(layout.layer_path(storage, "video_frames", KEY))
    assert row["clip_captions"] == lio.sha256_file(layout.layer_path(storage, "captions", KEY))
    sizes = [len(r["frames"]) for r in recs]
    assert min(sizes) == 1 and max(sizes) <= 5 and any(s > 1 for s in sizes)
    for r in recs:
        q, a = (t["value"] for t in json.loads(r["conversations"]))
        assert q == "<video>\n" + niah_prompt(DIGIT_QUESTION) and a.isdigit()
    again = build_stage_dataset(str(tmp_path / "again"), st, storage=storage, video_keys=[KEY])
    assert again["content_hash"] == man["content_hash"]  # deterministic


def test_retrieval_without_any_usable_haystack_is_a_clear_error(tmp_path):
    from longvila.errors import InputError

    st = _stage(load_recipe("smoke").stage(5), retrieval_samples=4)
    with pytest.raises(InputError, match="haystack"):
        build_stage_dataset(str(tmp_path / "ds"), st, storage=str(tmp_path), video_keys=["missing-00000001"])
    assert not lio.exists(str(tmp_path / "ds" / "manifest.json"))


def test_a_changed_video_changes_only_its_own_inputs(tmp_path):
    """Rebuilding after one video's captions change: the manifest's inputs differ for that video only."""
    storage = str(tmp_path)
    for key in (KEY, "other-00000002"):
        write_annotated_video(storage, key)
    st = load_recipe("smoke").stage(3)
    before = build_stage_dataset(str(tmp_path / "a"), st, storage=storage, video_keys=[KEY, "other-00000002"])
    import pyarrow.compute as pc

    from longvila import io as lio
    from longvila import layout

    url = layout.layer_path(storage, "captions", "other-00000002")
    t = lio.read_parquet(url)
    text = t.column("on_screen_text")
    lio.write_parquet(t.set_column(t.schema.get_field_index("on_screen_text"), "on_screen_text",
                                   pc.if_else(pc.equal(text, "4"), "5", text)), url)
    after = build_stage_dataset(str(tmp_path / "b"), st, storage=storage, video_keys=[KEY, "other-00000002"])
    changed = {i["video_key"] for i in before["inputs"] if i.get("video_key") and i not in after["inputs"]}
    assert changed == {"other-00000002"} and before["content_hash"] != after["content_hash"]


def test_prefer_annotation_trains_a_corpus_without_sidecars(tmp_path):
    """`caption_source: prefer_annotation` (the smoke recipe's): the sidecar captions where the corpus has any;
    a folder without sidecars trains on the model's captions (at share 1) instead of failing with zero samples."""
    import pyarrow.parquet as pq

    from longvila import layout
    from training.data.build import build_caption_dataset

    from .conftest import write_curated_video

    storage = str(tmp_path / "lake")
    for key in ("a-00000001", "b-00000002"):
        write_curated_video(storage, key)
        url = layout.layer_path(storage, "captions", key)
        table = pq.read_table(url)
        pq.write_table(table.set_column(table.column_names.index("source"), "source",
                                        [["model"] * table.num_rows]), url)
    keys = ["a-00000001", "b-00000002"]
    strict = DataOptions(caption_source="annotation", caption_share=0.0)
    assert build_caption_dataset(storage, keys, "captions", 2, options=strict)[0] == []
    logs = []
    prefer = DataOptions(caption_source="prefer_annotation", caption_share=0.0)
    records, _ = build_caption_dataset(storage, keys, "captions", 2, options=prefer, log=logs.append)
    assert len(records) >= 6 and any("prefer_annotation" in line for line in logs)
    write_curated_video(storage, "a-00000001")  # one video gains sidecar captions: only those are used
    records, _ = build_caption_dataset(storage, keys, "captions", 2,
                                       options=DataOptions(caption_source="prefer_annotation"))
    assert records and {r["sample_id"].split("/")[0] for r in records} == {"a-00000001"}
