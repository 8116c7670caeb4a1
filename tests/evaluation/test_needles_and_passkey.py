"""V-NIAH needle sets (built-in digits, a user's Parquet or folder in the public layout, bad sets), the
text-free lake haystack, and the passkey benchmark of the context extension."""

import io
import json

import pyarrow as pa
import pytest

from evaluation.niah import (
    DIGIT_QUESTION,
    NiahConfig,
    digit_needles,
    haystack_from_frames_parquet,
    load_needles,
    pick_lake_haystack,
    read_needle_set,
)
from longvila import io as lio
from longvila import layout
from longvila.errors import InputError


def _png(colour) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_built_in_digit_needles_are_seeded_and_held_out_by_seed():
    a, b, c = digit_needles(10, 32, seed=0), digit_needles(10, 32, seed=0), digit_needles(10, 32, seed=1)
    assert sorted(n.answer for n in a) == [str(d) for d in range(10)]
    assert all(n.question == DIGIT_QUESTION and n.image.size == (32, 32) for n in a)
    assert [n.image.tobytes() for n in a] == [n.image.tobytes() for n in b]
    assert all(x.image.tobytes() != y.image.tobytes() for x in a for y in c)  # no training image in the eval set


def test_user_needle_sets_in_the_public_layout(tmp_path):
    rows = [{"image": {"bytes": _png((255, 0, 0)), "path": None}, "question": "What colour?", "answer": "red"},
            {"image": {"bytes": _png((0, 0, 255)), "path": None}, "question": "What colour?", "answer": "blue"}]
    pq = str(tmp_path / "test-00000-of-00001.parquet")
    lio.write_parquet(pa.Table.from_pylist(rows), pq)
    got = read_needle_set(pq)
    assert [(n.answer, n.question, n.image.size) for n in got] == [("red", "What colour?", (20, 30)),
                                                                   ("blue", "What colour?", (20, 30))]
    assert [n.answer for n in read_needle_set(str(tmp_path))] == ["red", "blue"]  # a folder of Parquet shards
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png((0, 255, 0)))
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "question": "Colour?", "answer": "green"}))
    cfg = NiahConfig(frame_size=48, num_needles=0, needles_dir=str(folder)).validate()
    needles = load_needles(cfg)
    assert [n.answer for n in needles] == ["green"] and needles[0].image.size == (48, 48)


@pytest.mark.parametrize("listing,reason", [
    ([{"file_name": "a.png", "question": "Q?"}], "non-empty `question` and `answer`"),
    ([{"file_name": "missing.png", "question": "Q?", "answer": "x"}], "no image"),
    ([{"file_name": "junk.png", "question": "Q?", "answer": "x"}], "not a decodable image"),
    ([], "empty"),
])
def test_bad_needle_sets_name_the_file_and_row(tmp_path, listing, reason):
    (tmp_path / "a.png").write_bytes(_png((1, 2, 3)))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    (tmp_path / "needles.json").write_text(json.dumps(listing))
    with pytest.raises(InputError) as e:
        read_needle_set(str(tmp_path))
    assert reason in e.value.reason and str(tmp_path) in e.value.source
    with pytest.raises(InputError, match="no needle set"):
        read_needle_set(str(tmp_path / "nothing"))


def _frames(storage, key, pts, text_spans=None):
    from PIL import Image

    jp = []
    for i in range(len(pts)):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (i * 20 % 256, 50, 50)).save(buf, format="JPEG")
        jp.append(buf.getvalue())
    lio.write_parquet(pa.table({"frame_number": pa.array(range(len(pts)), pa.int64()), "pts_s": pts,
                                "width": pa.array([16] * len(pts), pa.int32()),
                                "height": pa.array([16] * len(pts), pa.int32()),
                                "jpeg": pa.array(jp, pa.binary())}), layout.layer_path(storage, "video_frames", key))
    if text_spans is not None:
        lio.write_parquet(pa.table({"start_s": [s for s, _, _ in text_spans], "end_s": [e for _, e, _ in text_spans],
                                    "on_screen_text": [t for _, _, t in text_spans],
                                    "source": ["annotation"] * len(text_spans)}),
                          layout.layer_path(storage, "captions", key))


def test_the_lake_haystack_is_the_longest_text_free_video(tmp_path):
    storage = str(tmp_path)
    assert pick_lake_haystack(storage) is None
    _frames(storage, "short-0000000a", [0.5, 1.5, 2.5])
    _frames(storage, "lesson-0000000b", [0.5 + i for i in range(8)], [(0, 4, "7"), (4, 8, None)])  # 5.5, 6.5: text-free
    assert pick_lake_haystack(storage) == "short-0000000a"
    got = haystack_from_frames_parquet(layout.layer_path(storage, "video_frames", "lesson-0000000b"), max_frames=10,
                                       size=16, captions_url=layout.layer_path(storage, "captions", "lesson-0000000b"))
    assert len(got) == 2


def test_passkey_benchmark_grid_and_teacher_forced_scoring(tmp_path):
    import torch

    from evaluation.passkey import PasskeyConfig, run_passkey, write_passkey_outputs
    from training.model.processing import build_processor
    from training.model.profiles import build_model, get_profile

    model = build_model(get_profile("smoke"), seed=0)
    proc = build_processor(model.config.tokens_per_frame, model.config.vision_config.image_size, 512)
    cfg = PasskeyConfig(lengths=[224, 320], depths=[0, 100], samples_per_cell=2, digits=1)
    res = run_passkey(model, proc, cfg)
    assert len(res.records) == 8 and set(res.accuracy_by_length()) == {224, 320}
    assert all(r["tokens"] <= r["length"] and len(r["passkey"]) == 1 for r in res.records)
    assert [r["passkey"] for r in run_passkey(model, proc, cfg).records] == [r["passkey"] for r in res.records]

    class Oracle(torch.nn.Module):
        """Logits that always predict the reference answer: the scoring must count every sample correct."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.ids = None

        def forward(self, input_ids, attention_mask=None):
            logits = torch.full((*input_ids.shape, 512), -1e4)
            logits[0, :-1].scatter_(1, input_ids[0, 1:, None], 0.0)  # token t predicts token t+1
            return type("Out", (), {"logits": logits})()

    oracle = run_passkey(Oracle(), proc, cfg)
    assert oracle.accuracy == 1.0
    paths = write_passkey_outputs(oracle, str(tmp_path))
    assert json.loads(open(paths["results"]).read())["summary"]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="shorter than"):
        run_passkey(model, proc, PasskeyConfig(lengths=[16]))


def test_benchmark_scores_are_identical_on_re_run(tmp_path, smoke_checkpoint):
    """Fixed seeds: the same checkpoint, haystack and needle set give byte-identical results files."""
    from evaluation.benchmarks import run_niah_benchmark

    storage = str(tmp_path / "lake")
    _frames(storage, "hay-0000000c", [0.5 + i for i in range(6)])
    cfg = NiahConfig(frame_counts=[1, 4], depths=[0, 100], num_needles=3, frame_size=32, seed=1)
    frames = layout.layer_path(storage, "video_frames", "hay-0000000c")
    for out in ("a", "b"):
        run_niah_benchmark(smoke_checkpoint, str(tmp_path / out), cfg, frames_parquet=frames)
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()
