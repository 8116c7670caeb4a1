"""Arrow schemas of the curation artefacts (one Parquet file per video per layer, see longvila.layout).

Every field carries its description in the field metadata (key ``doc``), so ``pq.read_schema(f)``
documents the file. Frame numbers are 0-based presentation-order indices of the first video stream;
times are seconds from the first frame (see ``curation.video``).

SHOTS (``shots/<key>.parquet``; rows tile ``[0, frame_count)``)

| column | type | meaning |
|---|---|---|
| index | int32 | shot number, 0.. in time order |
| start_frame | int64 | first frame of the shot |
| end_frame | int64 | one past the last frame (exclusive); equals the next shot's start_frame |
| start_s | float64 | time of start_frame |
| end_s | float64 | time of end_frame (video duration for the last shot) |
| transition_kind | string | how the shot begins: none (shot 0), cut, dissolve, fade, wipe, gradual |
| transition_start_frame | int64 | first frame of the incoming transition (= start_frame for a cut) |
| transition_end_frame | int64 | one past its last frame (= start_frame for a cut); clips start at or after it |
| transition_start_s | float64 | time of transition_start_frame |
| transition_end_s | float64 | time of transition_end_frame |

Tables written before the transition columns existed still read: their shots come back as cuts.

CLIPS (``clips/<key>.parquet``)

| column | type | meaning |
|---|---|---|
| index | int32 | clip number, 0.. in time order |
| shot_index | int32 | the shot that contains the clip |
| start_frame | int64 | first frame of the clip |
| end_frame | int64 | one past the last frame (exclusive) |
| start_s | float64 | start time |
| end_s | float64 | end time |

CLIP_FRAMES (``clip_frames/<key>.parquet``; ``frames_per_clip`` rows per clip, fewer only when a clip
has fewer frames)

| column | type | meaning |
|---|---|---|
| clip_index | int32 | CLIPS.index |
| frame_index_in_clip | int32 | 0.. order of the sample inside its clip |
| frame_number | int64 | frame number in the video |
| pts_s | float64 | its presentation time in seconds |
| width | int32 | JPEG width (= size) |
| height | int32 | JPEG height (= size) |
| jpeg | binary | JPEG bytes, RGB, square `size` x `size` (aspect-preserving resize + pad, see curation.frames) |

VIDEO_FRAMES (``video_frames/<key>.parquet``; uniform samples over the whole video for long-video
training and evaluation)

| column | type | meaning |
|---|---|---|
| frame_number | int64 | frame number in the video |
| pts_s | float64 | its presentation time in seconds |
| width | int32 | JPEG width |
| height | int32 | JPEG height |
| jpeg | binary | JPEG bytes, as in CLIP_FRAMES |

PROBE (one row; the JSON form ``probe/<key>.json`` is ``ProbeResult.to_dict()``): the fields of
``curation.probe.ProbeResult``.
"""

from __future__ import annotations

import pyarrow as pa

from .clips import Clip
from .shots import Shot


def _f(name: str, typ: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, typ, nullable=False, metadata={"doc": doc})


SHOTS = pa.schema([
    _f("index", pa.int32(), "shot number, 0.. in time order"),
    _f("start_frame", pa.int64(), "first frame of the shot (0-based, presentation order)"),
    _f("end_frame", pa.int64(), "one past the last frame (exclusive); the next shot's start_frame"),
    _f("start_s", pa.float64(), "time of start_frame in seconds"),
    _f("end_s", pa.float64(), "time of end_frame in seconds (video duration for the last shot)"),
    _f("transition_kind", pa.string(), "how the shot begins: none, cut, dissolve, fade, wipe, gradual"),
    _f("transition_start_frame", pa.int64(), "first frame of the incoming transition (start_frame for a cut)"),
    _f("transition_end_frame", pa.int64(), "one past the last transition frame (start_frame for a cut)"),
    _f("transition_start_s", pa.float64(), "time of transition_start_frame in seconds"),
    _f("transition_end_s", pa.float64(), "time of transition_end_frame in seconds"),
])
_SHOT_CORE = ["index", "start_frame", "end_frame", "start_s", "end_s"]  # what every shots table has

CLIPS = pa.schema([
    _f("index", pa.int32(), "clip number, 0.. in time order"),
    _f("shot_index", pa.int32(), "index of the shot containing the clip"),
    _f("start_frame", pa.int64(), "first frame of the clip"),
    _f("end_frame", pa.int64(), "one past the last frame of the clip (exclusive)"),
    _f("start_s", pa.float64(), "start time in seconds"),
    _f("end_s", pa.float64(), "end time in seconds"),
])

CLIP_FRAMES = pa.schema([
    _f("clip_index", pa.int32(), "CLIPS.index of the clip the frame was sampled from"),
    _f("frame_index_in_clip", pa.int32(), "0.. position of the sample inside its clip"),
    _f("frame_number", pa.int64(), "frame number in the video"),
    _f("pts_s", pa.float64(), "presentation time of the frame in seconds"),
    _f("width", pa.int32(), "JPEG width in pixels"),
    _f("height", pa.int32(), "JPEG height in pixels"),
    _f("jpeg", pa.binary(), "JPEG-encoded RGB frame, square, aspect-preserving resize + pad"),
])

VIDEO_FRAMES = pa.schema([
    _f("frame_number", pa.int64(), "frame number in the video"),
    _f("pts_s", pa.float64(), "presentation time of the frame in seconds"),
    _f("width", pa.int32(), "JPEG width in pixels"),
    _f("height", pa.int32(), "JPEG height in pixels"),
    _f("jpeg", pa.binary(), "JPEG-encoded RGB frame, square, aspect-preserving resize + pad"),
])

PROBE = pa.schema([
    _f("path", pa.string(), "probed local path"),
    _f("container", pa.string(), "demuxer name"),
    _f("codec", pa.string(), "video codec name"),
    _f("duration_s", pa.float64(), "video duration in seconds"),
    _f("fps", pa.float64(), "average frame rate"),
    _f("fps_is_variable", pa.bool_(), "variable frame rate detected from pts deltas"),
    _f("frame_count", pa.int64(), "number of video frames"),
    _f("width", pa.int32(), "coded width"),
    _f("height", pa.int32(), "coded height"),
    _f("rotation", pa.int32(), "display rotation in degrees"),
    _f("has_audio", pa.bool_(), "container has an audio stream"),
    _f("size_bytes", pa.int64(), "file size in bytes"),
    _f("sha256", pa.string(), "hex sha256 of the file"),
])


def _check(table: pa.Table, schema: pa.Schema, what: str) -> None:
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"{what} table lacks column(s) {missing}")


def shots_to_table(shots: list[Shot]) -> pa.Table:
    cols = {n: [getattr(s, n) for s in shots] for n in SHOTS.names}
    return pa.Table.from_pydict(cols, schema=SHOTS)


def table_to_shots(table: pa.Table) -> list[Shot]:
    """Shots of a SHOTS table; one written before the transition columns existed reads as cuts."""
    missing = [n for n in _SHOT_CORE if n not in table.column_names]
    if missing:
        raise ValueError(f"shots table lacks column(s) {missing}")
    names = [n for n in SHOTS.names if n in table.column_names]
    d = table.select(names).to_pydict()
    return [Shot(**{n: d[n][i] for n in names}) for i in range(table.num_rows)]


def clips_to_table(clips: list[Clip]) -> pa.Table:
    cols = {n: [getattr(c, n) for c in clips] for n in CLIPS.names}
    return pa.Table.from_pydict(cols, schema=CLIPS)


def table_to_clips(table: pa.Table) -> list[Clip]:
    _check(table, CLIPS, "clips")
    d = table.select(CLIPS.names).to_pydict()
    return [Clip(**{n: d[n][i] for n in CLIPS.names}) for i in range(table.num_rows)]


def probe_to_table(probe) -> pa.Table:
    d = probe.to_dict()
    return pa.Table.from_pylist([{n: d[n] for n in PROBE.names}], schema=PROBE)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
