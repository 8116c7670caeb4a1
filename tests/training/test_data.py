import json

import pytest
import torch

from longvila.errors import InputError
from training.data import IGNORE_INDEX, build_rows, collate_rows, pack_samples, read_manifest, read_records
from training.data.build import build_stage_dataset
from training.data.passkey import fit_filler_units, passkey_records, render_passkey
from training.recipes import load_recipe


def test_captions_to_stage_samples(stage_datasets, lake, tmp_path):
    recs = read_records(stage_datasets[1])
    man = read_manifest(stage_datasets[1])
    assert man["num_samples"] == len(recs) == 6  # 2 videos x 3 captioned clips
    assert man["video_keys"] == ["video_a-00000001", "video_b-00000002"]
    assert {i["video_key"] for i in man["inputs"]} == set(man["video_keys"])
    assert all(len(i["clip_captions"]) == 64 for i in man["inputs"])
    # the per-video lineage table: the versions of the files read (= their assets' data versions)
    from longvila.lineage_table import find_video, read_table

    table = read_table(f"{stage_datasets[1]}/{man['lineage']['table']}", man["lineage"]["sha256"])
    assert table.num_rows == man["lineage"]["videos"] == 2
    row = find_video(table, "video_a-00000001")
    assert row["clip_captions"] == next(i["clip_captions"] for i in man["inputs"] if i["video_key"] == row["video_key"])
    assert find_video(table, "nope") is None
    r = recs[0]
    conv = json.loads(r["conversations"])
    assert conv[0]["value"].startswith("<video>") and conv[1]["from"] == "gpt"
    # the smoke recipe's stage-1 frames per clip sample, uniformly sampled from the clip's 4
    assert len(r["frames"]) == min(4, load_recipe("smoke").stage(1).num_frames)
    # stage 3 adds short QA samples: one per clip + one temporal-order QA per adjacent clip pair (with every
    # clip's caption samples kept; the smoke recipe keeps a share of them and mixes passkey text in)
    import dataclasses

    from training.data.options import DataOptions

    st = load_recipe("smoke").stage(3)
    st = dataclasses.replace(st, data=dataclasses.replace(st.data, options=DataOptions()))
    build_stage_dataset(str(tmp_path / "s3"), st, storage=lake, video_keys=["video_a-00000001", "video_b-00000002"])
    kinds = [x["kind"] for x in read_records(str(tmp_path / "s3"))]
    assert kinds.count("caption") == 6 and kinds.count("qa") == 6 + 4
    smoke3 = [x["kind"] for x in read_records(stage_datasets[3])]
    assert smoke3.count("passkey") == load_recipe("smoke").stage(3).data.options.passkey_samples


def test_label_masking_and_chat_template(stage_datasets, processor):
    recs = read_records(stage_datasets[1])[:1]
    rows, rep = build_rows(recs, processor, 256, 2, packing=False)
    row = rows[0]
    sup = row.labels != IGNORE_INDEX
    answer = json.loads(recs[0]["conversations"])[1]["value"]
    # exactly the assistant answer (+ its end-of-turn token) is supervised
    text = processor.tokenizer.decode(row.input_ids[sup])
    assert text.startswith(answer) and text.endswith("<|im_end|>")
    assert processor.tokenizer.decode(row.input_ids[:8]).startswith("<|im_start|>system")
    n_img = int((row.input_ids == processor.image_token_id).sum())
    assert n_img == 2 * processor.tokens_per_frame and row.pixel_values.shape[0] == 2
    assert not sup[row.input_ids == processor.image_token_id].any()


def test_packing_keeps_samples_apart(stage_datasets, processor):
    recs = read_records(stage_datasets[1])
    rows, rep = build_rows(recs, processor, 256, 2, packing=True)
    assert rep.used == len(recs) and rep.rows < len(recs)  # several samples share rows
    total = 0
    for row in rows:
        seg = row.segment_ids
        assert row.input_ids.numel() <= 256
        k = int(seg.max()) + 1
        assert k == len(row.sample_ids) and int(seg.min()) == 0
        for s in range(k):
            pos = row.position_ids[seg == s]
            assert torch.equal(pos, torch.arange(pos.numel()))  # positions restart per sample
        # frames of the row: exactly one image block per frame, in order
        image_tokens = int((row.input_ids == processor.image_token_id).sum())
        assert image_tokens == row.pixel_values.shape[0] * processor.tokens_per_frame
        total += row.num_supervised
    # packing masks each sample's first label (never a target anyway); the rest survive
    assert rep.supervised - len(recs) <= total <= rep.supervised
    # the attention plan of the packed rows: every (query rows, key rows) piece stays inside one sample
    from training.sp.docs import Chunk, build_schedule

    b = collate_rows(rows[:2], processor.pad_token_id)
    seg = b["segment_ids"]
    S = seg.shape[1]
    plan = build_schedule(seg, [Chunk(0, S, 0)], [[Chunk(0, S, 0)]], 0, True, seg.shape[0], S, S)
    flat = seg.reshape(-1)
    for call in plan.steps[0]:
        q_rows, k_rows = call.q_rows.index("cpu"), call.k_rows.index("cpu")  # packed row -> flat token index
        for qa, qb, ka, kb in call.layout.pieces():
            ids = torch.cat([flat[q_rows[qa:qb]], flat[k_rows[ka:kb]]]).unique()
            assert ids.numel() == 1 and int(ids) >= 0


def test_pack_greedy_first_fit():
    def s(n, sid):
        return {"sample_id": sid, "input_ids": torch.arange(n), "labels": torch.arange(n)}

    rows = pack_samples([s(6, "a"), s(5, "b"), s(4, "c"), s(3, "d")], max_length=10)
    assert [r.sample_ids for r in rows] == [["a", "c"], ["b", "d"]]
    assert rows[0].labels[6].item() == IGNORE_INDEX  # first token of a packed sample is never a target
    with pytest.raises(ValueError, match="max_length"):
        pack_samples([s(11, "x")], max_length=10)


def test_passkey_set_fills_target_length(processor):
    recs = passkey_records(5, seed=1)
    assert recs == passkey_records(5, seed=1) and len({r["passkey"] for r in recs}) == 5

    def count(c):
        return len(processor.encode_conversation(c, 0)[0])

    for L in (256, 512):
        n = fit_filler_units(count, L)
        conv = render_passkey(recs[0]["passkey"], recs[0]["depth"], n)
        assert L - 12 < count(conv) <= L
        assert recs[0]["passkey"] in conv[0]["value"] and conv[1]["value"].endswith(recs[0]["passkey"] + ".")


def test_passkey_dataset_and_rows(stage_datasets, processor):
    recs = read_records(stage_datasets[4])
    assert len(recs) == load_recipe("smoke").stage(4).data.num_samples and all(r["kind"] == "passkey" for r in recs)
    rows, rep = build_rows(recs[:4], processor, 512, 0, packing=False)
    # each sample fills its share of max_length, to a filler sentence and the key's length (sized with 5 digits)
    want = [json.loads(r["meta"])["fill"] * 512 for r in recs[:4]]
    assert rep.used == 4 and all(w - 24 <= r.input_ids.numel() <= w for r, w in zip(rows, want))


def test_zero_usable_samples_fail_clearly(tmp_path, lake, processor, stage_datasets):
    st = load_recipe("smoke").stage(1)
    with pytest.raises(InputError, match="zero usable samples"):
        build_stage_dataset(str(tmp_path / "empty"), st, storage=lake, video_keys=["nope-00000000"])
    assert not (tmp_path / "empty").exists()  # nothing written
    recs = read_records(stage_datasets[1])
    with pytest.raises(InputError, match="zero usable samples: 6 records, 6 longer than max_length 16"):
        build_rows(recs, processor, 16, 2)


def test_external_parquet_and_webdataset(tmp_path, processor):
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    conv = [{"from": "human", "value": "What colour is the sky?"}, {"from": "gpt", "value": "blue"}]
    pq.write_table(pa.table({"conversations": [json.dumps(conv)] * 3}), tmp_path / "ext.parquet")
    assert len(read_records(str(tmp_path / "ext.parquet"))) == 3
    tar = tmp_path / "shard-000.tar"
    with tarfile.open(tar, "w") as tf:
        for key in ("s1", "s2"):
            data = json.dumps({"conversations": conv}).encode()
            ti = tarfile.TarInfo(f"{key}.json")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    recs = read_records(str(tar))
    assert [r["sample_id"] for r in recs] == ["s1", "s2"]
    rows, rep = build_rows(recs, processor, 128, 0)
    assert rep.used == 2
    with pytest.raises(InputError, match="no such"):
        read_records(str(tmp_path / "missing.parquet"))
