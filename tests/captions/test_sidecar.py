"""Annotation sidecars as a caption source: formats, validation errors naming the file, clip matching,
and the captions table that mixes annotated and model captions."""

import json

import pytest

from curation.captioning.captioner import (
    CAPTIONS_SCHEMA,
    ClipCaptioner,
    caption_sources,
    caption_video,
    text_free_indices,
)
from curation.captioning.sidecar import (
    MIN_COVERAGE,
    Segment,
    find_sidecar,
    load_sidecar,
    match_clips,
    parse_json,
    parse_srt,
)
from curation.captioning.types import ChatReply
from curation.clips import Clip
from longvila.errors import InputError

SRT = """1
00:00:00,000 --> 00:00:02,500
The number 7 in white
on a red background.

2
00:00:02,500 --> 00:00:05,000
A test pattern.
"""


def test_the_three_json_shapes_and_srt_give_the_same_segments(tmp_path):
    canonical = {"segments": [{"start": 0, "end": 2.5, "caption": "A", "text": "7"},
                              {"start": 2.5, "end": 5, "caption": "B"}]}
    activitynet = {"duration": 5.0, "timestamps": [[0, 2.5], [2.5, 5]], "sentences": ["A", "B"]}
    youcook2 = {"annotations": [{"segment": [0, 2.5], "sentence": "A"}, {"segment": [2.5, 5], "sentence": "B"}]}
    spans = lambda segs: [(s.start_s, s.end_s, s.caption) for s in segs]  # noqa: E731
    want = [(0.0, 2.5, "A"), (2.5, 5.0, "B")]
    for obj in (canonical, activitynet, youcook2):
        assert spans(parse_json(json.dumps(obj), "x.json")) == want
    assert parse_json(json.dumps(canonical), "x.json")[0].text == "7"
    srt = parse_srt(SRT, "x.srt")
    assert [(s.start_s, s.end_s) for s in srt] == [(0.0, 2.5), (2.5, 5.0)]
    assert srt[0].caption == "The number 7 in white on a red background." and srt[0].text is None


@pytest.mark.parametrize("name,body,reason", [
    ("bad.json", "{not json", "not valid JSON"),
    ("bad.json", json.dumps({"captions": []}), "no 'segments'"),
    ("bad.json", json.dumps({"segments": [{"start": 0, "end": 9.0, "caption": "late"}]}), "after the end of the video"),
    ("bad.json", json.dumps({"segments": [{"start": 3, "end": 2, "caption": "x"}]}), "not 0 <= start < end"),
    ("bad.json", json.dumps({"segments": [{"start": 0, "end": 2, "caption": "  "}]}), "empty caption"),
    ("bad.json", json.dumps({"segments": [{"start": "0", "end": 2, "caption": "x"}]}), "expected a number"),
    ("bad.json", json.dumps({"timestamps": [[0, 1]], "sentences": []}), "same length"),
    ("bad.json", json.dumps({"segments": []}), "no segments"),
    ("bad.srt", "1\n00:00:00,000 -> 00:00:01,000\nx\n", "no 'start --> end' line"),
    ("bad.srt", "1\n00:00:xx,000 --> 00:00:01,000\nx\n", "cannot read the time line"),
])
def test_bad_sidecars_raise_errors_naming_the_file(tmp_path, name, body, reason):
    p = tmp_path / name
    p.write_text(body)
    with pytest.raises(InputError) as e:
        load_sidecar(str(p), duration_s=5.0)
    assert e.value.source == str(p) and reason in e.value.reason


def test_find_sidecar_beside_the_video_and_refuse_two(tmp_path):
    video = tmp_path / "v01.mp4"
    video.write_bytes(b"")
    assert find_sidecar(str(video)) is None
    (tmp_path / "v01.srt").write_text(SRT)
    assert find_sidecar(str(video)) == str(tmp_path / "v01.srt")
    (tmp_path / "v01.json").write_text("{}")
    with pytest.raises(InputError, match="two annotation sidecars"):
        find_sidecar(str(video))


def test_clips_take_the_segment_that_covers_most_of_them():
    segs = [Segment(0.0, 2.0, "a"), Segment(2.0, 6.0, "b")]
    got = match_clips(segs, [(0.0, 2.0), (1.8, 4.0), (5.0, 9.0), (0.5, 1.0)])
    assert [g.caption if g else None for g in got] == ["a", "b", None, "a"]  # (5, 9): b covers 25 % < MIN_COVERAGE
    assert MIN_COVERAGE > 0.5


class _Scripted:
    """A ChatBackend double: the reply names how many frames it was shown."""

    model_id = "scripted-vlm"

    def __init__(self):
        self.calls = 0

    def chat(self, requests):
        self.calls += len(requests)
        return [ChatReply(text=f"A clip with {sum(p.get('type') == 'image' for p in r.messages[0]['content'])} frames.")
                for r in requests]


def _clips(spans):
    return [Clip(i, 0, int(s * 10), int(e * 10), s, e) for i, (s, e) in enumerate(spans)]


def _frames_table(n_clips, per_clip=2):
    import io

    import pyarrow as pa
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="JPEG")
    rows = [(c, j) for c in range(n_clips) for j in range(per_clip)]
    return pa.table({"clip_index": pa.array([c for c, _ in rows], pa.int32()),
                     "frame_index_in_clip": pa.array([j for _, j in rows], pa.int32()),
                     "jpeg": pa.array([buf.getvalue()] * len(rows), pa.binary())})


def test_captions_table_mixes_annotation_and_model_rows_and_records_the_source(tmp_path):
    side = tmp_path / "v.json"
    side.write_text(json.dumps({"segments": [{"start": 0, "end": 2, "caption": "The number 3.", "text": "3"},
                                             {"start": 2, "end": 4, "caption": "A test pattern."}]}))
    sidecar = load_sidecar(str(side), duration_s=6.0)
    backend = _Scripted()
    table = caption_video(lambda: ClipCaptioner(backend), _clips([(0, 2), (2, 4), (4, 6)]), _frames_table(3), sidecar)
    assert table.schema == CAPTIONS_SCHEMA
    d = table.to_pydict()
    assert caption_sources(table) == ["annotation", "annotation", "model"]
    assert d["caption"][:2] == ["The number 3.", "A test pattern."] and d["caption"][2] == "A clip with 2 frames."
    assert d["on_screen_text"] == ["3", None, None] and all(d["ok"])
    assert d["model"][0] == sidecar.tag and sidecar.tag.startswith("annotation:v.json@")
    assert d["model"][2] == "scripted-vlm"
    assert backend.calls == 1
    # haystack material: only clips annotated as text-free (clip 3, captioned by the model, may show text)
    assert text_free_indices(table, [0.5, 3.0, 4.5, 7.0]) == [1]  # the middle of clip 2: surely its segment


def test_a_fully_annotated_video_never_builds_the_captioner(tmp_path):
    side = tmp_path / "v.srt"
    side.write_text(SRT)
    sidecar = load_sidecar(str(side), duration_s=5.0)

    def factory():
        raise AssertionError("the VLM must not be loaded when every clip is annotated")

    table = caption_video(factory, _clips([(0, 2.5), (2.5, 5)]), _frames_table(2), sidecar)
    assert caption_sources(table) == ["annotation", "annotation"]
    assert text_free_indices(table, [1.0, 3.0]) == [0, 1]  # no on-screen text annotated: every frame usable
