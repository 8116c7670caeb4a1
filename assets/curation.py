"""Curation lineage: one partition per raw video (`assets.partitions.videos`).

    raw_video ─┬─> video_probe ─┬─> video_shots ─> video_clips ─┬─> clip_frames
               │                └─> video_frames                └─> clip_files (optional)
               └──────────────(every layer that decodes the video also depends on raw_video)

    video_source (external, unpartitioned): the source listing reported by the new-video sensor

Each asset is thin: resolve the partition's source URL from the manifest (`LakeResource.video_url`),
call the `curation` library, write one file per partition to the `longvila.layout` path atomically,
and return a `MaterializeResult` with

* ``data_version`` = sha256 of the bytes written (raw_video: sha256 of the video itself), so a
  re-run producing identical output does not mark anything downstream stale;
* ``code_version`` (on the definition) = the library's CODE_VERSION plus the parameters that shape the
  output (from `CurationConfig`), so changing e.g. the shot detector marks shots and everything
  below stale in every partition;
* metadata: counts, durations, timings, a markdown preview and the output path.

Why `raw_video` is a *materialised* asset and not an observable source asset: the new-video sensor
notices new/changed files by a cheap fingerprint (size + mtime/ETag, `longvila.sources`), and one
`raw_video` run per change hashes the bytes and records the sha256 as the data version with full
provenance (run, time, source URL) in the event log. It works unchanged with `materialize()`, the demo
and `execute_in_process`, and the automated downstream assets react to its data version. A partitioned
`@observable_source_asset` would re-hash every video on each observation (`DataVersionsByPartition`
covers all partitions) or need hand-made observation events. `raw_video` hashes the video while copying it
into the local content-addressed cache (`longvila.cache.snapshot`), and every later step decodes that copy
(`pinned_copy`, re-fetched and verified if evicted): a source file replaced after raw_video hashed it is
never silently curated.

Automation: every asset below raw_video has the shared `assets.policies.ON_NEW_DATA` condition (keyed on
input *data versions* and code versions, not on any new materialisation): a changed video re-runs
exactly its partition, a re-run that reproduces identical bytes triggers nothing, and a failed
partition is not retried until its input changes. Steps are retried with backoff on transient errors
(`assets.policies.TRANSIENT_RETRY`), never on bad input.

Bad input: a corrupt/empty/non-video file raises `longvila.errors.VideoError` in the library; the
asset turns it into `dagster.Failure` naming the source file (relative path and URL) and the reason.
Only that partition's run fails; nothing is written for it (all writes are atomic and happen after
the computation succeeded).

Asset checks (one per layer, evaluated by the layer's own step from what it holds, so they cost no step,
process or event writes of their own; blocking where later layers depend on the invariant):
probe values are sane; shots tile [0, frame_count) without gap or overlap; every clip lies inside
one shot and lasts within [min_clip_s, max_clip_s]; clip_frames has frames_per_clip frames per clip;
video_frames has the expected count (min(max_video_frames, duration*fps), at least 1).
"""


import contextlib
import math
import os
import time
from typing import Iterator, Optional

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    DataVersion,
    Definitions,
    MaterializeResult,
    MetadataValue,
)

from assets.common import (
    data_version,
    failure,
    input_failure,
    latest_record,
    layer_result,
    md_table,
    per_video_asset,
    per_video_check_spec,
    progress,
    write_json,
    write_table,
)
from assets.partitions import partitioned_checks
from assets.resources import LakeResource
from curation.config import CurationConfig, code_versions
from longvila import io as lio
from longvila import layout
from longvila.cache import pinned_copy, snapshot

GROUP = "curation"

# asset keys other layers depend on
VIDEO_SOURCE = AssetKey("video_source")
RAW_VIDEO = AssetKey("raw_video")
VIDEO_PROBE = AssetKey("video_probe")
VIDEO_SHOTS = AssetKey("video_shots")
VIDEO_CLIPS = AssetKey("video_clips")
CLIP_FRAMES = AssetKey("clip_frames")
VIDEO_FRAMES = AssetKey("video_frames")
CLIP_FILES = AssetKey("clip_files")

VIDEO_SOURCE_SPEC = AssetSpec(
    key=VIDEO_SOURCE, group_name=GROUP, kinds={"json"},
    description="The source folder or bucket as the new-video sensor sees it (longvila.sources): each "
    "materialisation is reported by the sensor when the manifest changes and lists the present videos, "
    "the removed ones (when and why) and the rejected files (why). Removed videos keep their partition "
    "and history; the datasets leave them out.",
)

# tolerance when comparing clip durations with the configured bounds (float seconds)
_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _source(context, lake: LakeResource) -> dict:
    """Manifest entry of the run's partition; a non-retryable Failure if unknown or removed."""
    with input_failure(context, "source lookup"):
        return lake.video_entry(context.partition_key)


@contextlib.contextmanager
def _video_failure(context, entry: dict, layer: str) -> Iterator[None]:
    """A library InputError/VideoError becomes a Failure naming the *source* file and the reason."""
    with input_failure(context, layer, file=entry.get("relpath") or entry.get("url"), url=entry.get("url")):
        yield


def _raw_sha(context) -> str:
    """sha256 of the video that this partition's latest raw_video materialisation hashed (its data version)."""
    sha = data_version(latest_record(context.instance, RAW_VIDEO, context.partition_key))
    if not sha:
        raise failure(context, "source lookup", "raw_video has not been materialised")
    return sha


def _suffix(entry: dict) -> str:
    return os.path.splitext(entry.get("relpath") or entry["url"])[1]


@contextlib.contextmanager
def _local_video(context, entry: dict, lake: LakeResource) -> Iterator[str]:
    """A local copy holding exactly the bytes raw_video hashed (longvila.cache.pinned_copy)."""
    with pinned_copy(entry["url"], _raw_sha(context), lake.settings(), suffix=_suffix(entry)) as path:
        yield path


def _read_json(lake: LakeResource, layer: str, key: str):
    return lio.read_json(lake.layer_url(layer, key), lake.settings())


def _read_table(lake: LakeResource, layer: str, key: str, columns=None):
    return lio.read_parquet(lake.layer_url(layer, key), lake.settings(), columns=columns)


# ---------------------------------------------------------------------------------------------
# code versions
# ---------------------------------------------------------------------------------------------
def expected_video_frames(duration_s: float, cfg: CurationConfig) -> int:
    """How many whole-video frames `video_frames` should hold for a video of `duration_s`."""
    n = int(math.floor(duration_s * cfg.video_fps + 1e-9))
    return max(1, min(cfg.max_video_frames, n))


# ---------------------------------------------------------------------------------------------
# the assets
# ---------------------------------------------------------------------------------------------
def build_curation_defs(cfg: Optional[CurationConfig] = None) -> Definitions:
    with partitioned_checks():
        return _build_curation_defs(cfg)


def _build_curation_defs(cfg: Optional[CurationConfig] = None) -> Definitions:
    """Definitions of the curation lineage for one configuration (default: `CurationConfig.from_env()`).

    Resources are not bound here (`orchestration.definitions` binds ``lake``); tests may build a
    variant with another configuration to see exactly which layers become stale.
    """
    cfg = cfg or CurationConfig.from_env()
    cv = code_versions(cfg)

    @per_video_asset(
        automated=False,
        key=RAW_VIDEO,
        group_name=GROUP,
        code_version=cv["raw_video"],
        kinds={"video"},
        description="A raw video of the source, hashed while copied into the local content-addressed cache "
        "(the copy every later step decodes). Data version = sha256 of its bytes. "
        "Materialised by the new-video sensor's runs for new or changed videos.",
    )
    def raw_video(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        entry = _source(context, lake)
        t0 = time.perf_counter()
        try:  # hashed while copied into the local cache: later steps decode exactly these bytes
            snap = snapshot(entry["url"], lake.settings(), suffix=_suffix(entry))
            sha, size = snap.sha256, snap.size_bytes
        except FileNotFoundError:
            raise failure(context, "raw video", f"gone from the source ({entry['url']})",
                          file=entry.get("relpath")) from None
        return MaterializeResult(
            data_version=DataVersion(sha),
            metadata={
                "relpath": entry.get("relpath", ""),
                "url": MetadataValue.path(entry["url"]),
                "size_bytes": size,
                "sha256": sha,
                "hash_seconds": round(time.perf_counter() - t0, 4),
            },
        )

    @per_video_asset(
        key=VIDEO_PROBE,
        deps=[RAW_VIDEO],
        group_name=GROUP,
        code_version=cv["video_probe"],
        kinds={"video", "json"},
        check_specs=[per_video_check_spec("probe_is_sane", VIDEO_PROBE, blocking=True,
                                          description="duration, fps, frame count and size are positive and "
                                                      "consistent")],
        description="Container/codec/duration/fps (VFR aware)/frames/size/rotation/audio of the video "
        "(curation.probe). Written to probe/<key>.json.",
    )
    def video_probe(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        from curation.probe import probe_video

        entry = _source(context, lake)
        key = context.partition_key
        t0 = time.perf_counter()
        with _video_failure(context, entry, "probe"), _local_video(context, entry, lake) as path:
            res = probe_video(path, sha256=_raw_sha(context))
        d = res.to_dict()
        d["path"] = entry["url"]
        d["relpath"] = entry.get("relpath")
        out = lake.layer_url("probe", key)
        version = write_json(out, d, lake.settings())
        return layer_result(
            out, version, checks=[probe_check(d)],
            source=entry.get("relpath", ""),
            duration_s=float(res.duration_s),
            fps=float(res.fps),
            fps_is_variable=bool(res.fps_is_variable),
            frame_count=int(res.frame_count),
            resolution=f"{res.width}x{res.height}",
            codec=str(res.codec),
            has_audio=bool(res.has_audio),
            seconds=round(time.perf_counter() - t0, 3),
        )

    @per_video_asset(
        key=VIDEO_SHOTS,
        deps=[RAW_VIDEO, VIDEO_PROBE],
        group_name=GROUP,
        code_version=cv["video_shots"],
        kinds={"video", "parquet"},
        check_specs=[per_video_check_spec("shots_tile_video", VIDEO_SHOTS, blocking=True,
                                          description="shots tile [0, frame_count) with no gap or overlap, in order")],
        description=f"Shot boundaries (detector {cfg.detector!r}, curation.shots). shots/<key>.parquet.",
    )
    def video_shots(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        from curation.schemas import shots_to_table
        from curation.shots import detect_shots

        entry = _source(context, lake)
        key = context.partition_key
        probe = _read_json(lake, "probe", key)
        t0 = time.perf_counter()
        with _video_failure(context, entry, "shot detection"), _local_video(context, entry, lake) as path:
            shots = detect_shots(path, detector=cfg.detector, progress=progress(context), **cfg.detector_options)
        secs = time.perf_counter() - t0
        table = shots_to_table(shots)
        out = lake.layer_url("shots", key)
        version, _ = write_table(out, table, lake.settings())
        lengths = [s.end_s - s.start_s for s in shots]
        return layer_result(
            out, version, checks=[shots_check(shots, int(probe["frame_count"]))],
            detector=cfg.detector,
            num_shots=len(shots),
            mean_shot_s=round(sum(lengths) / len(lengths), 3) if lengths else 0.0,
            seconds=round(secs, 3),
            frames_per_second=round(probe.get("frame_count", 0) / secs, 1) if secs > 0 else 0.0,
            preview=MetadataValue.md(md_table([
                {"shot": s.index, "start_frame": s.start_frame, "end_frame": s.end_frame,
                 "start_s": s.start_s, "end_s": s.end_s} for s in shots])),
        )

    @per_video_asset(
        key=VIDEO_CLIPS,
        deps=[VIDEO_SHOTS, VIDEO_PROBE],
        group_name=GROUP,
        code_version=cv["video_clips"],
        kinds={"parquet"},
        check_specs=[per_video_check_spec("clips_within_bounds", VIDEO_CLIPS, blocking=True,
                                          description=f"every clip lasts within [{cfg.min_clip_s:g}, "
                                                      f"{cfg.max_clip_s:g}] s and lies in one shot")],
        description=f"Clips of {cfg.min_clip_s:g}-{cfg.max_clip_s:g} s inside single shots (curation.clips). "
        "clips/<key>.parquet.",
    )
    def video_clips(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        from curation.clips import make_clips
        from curation.schemas import clips_to_table, table_to_shots

        entry = _source(context, lake)
        key = context.partition_key
        shots = table_to_shots(_read_table(lake, "shots", key))
        fps = float(_read_json(lake, "probe", key)["fps"])
        with _video_failure(context, entry, "clip making"):
            clips = make_clips(shots, fps, max_clip_s=cfg.max_clip_s, min_clip_s=cfg.min_clip_s)
        out = lake.layer_url("clips", key)
        version, _ = write_table(out, clips_to_table(clips), lake.settings())
        lengths = [c.end_s - c.start_s for c in clips]
        return layer_result(
            out, version, checks=[clips_check(clips, shots, cfg)],
            num_clips=len(clips),
            num_shots=len(shots),
            covered_s=round(sum(lengths), 3),
            min_clip_s=round(min(lengths), 3) if lengths else 0.0,
            max_clip_s=round(max(lengths), 3) if lengths else 0.0,
            preview=MetadataValue.md(md_table([
                {"clip": c.index, "shot": c.shot_index, "start_s": c.start_s, "end_s": c.end_s}
                for c in clips])),
        )

    @per_video_asset(
        key=CLIP_FRAMES,
        deps=[RAW_VIDEO, VIDEO_CLIPS],
        group_name=GROUP,
        code_version=cv["clip_frames"],
        kinds={"parquet", "jpeg"},
        check_specs=[per_video_check_spec("clip_frame_counts", CLIP_FRAMES,
                                          description=f"{cfg.frames_per_clip} frames per clip, for every clip")],
        description=f"{cfg.frames_per_clip} JPEG frames per clip at {cfg.frame_size}px (curation.frames). "
        "clip_frames/<key>.parquet.",
    )
    def clip_frames(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        from curation.frames import sample_clip_frames
        from curation.schemas import table_to_clips

        entry = _source(context, lake)
        key = context.partition_key
        clips = table_to_clips(_read_table(lake, "clips", key))
        t0 = time.perf_counter()
        with _video_failure(context, entry, "clip frame sampling"), _local_video(context, entry, lake) as path:
            table = sample_clip_frames(path, clips, frames_per_clip=cfg.frames_per_clip, size=cfg.frame_size,
                                       jpeg_quality=cfg.jpeg_quality, progress=progress(context))
        secs = time.perf_counter() - t0
        out = lake.layer_url("clip_frames", key)
        version, nbytes = write_table(out, table, lake.settings())
        return layer_result(
            out, version, checks=[clip_frames_check(clips, table.column("clip_index").to_pylist(), cfg)],
            num_clips=len(clips),
            num_frames=table.num_rows,
            frames_per_clip=cfg.frames_per_clip,
            bytes=nbytes,
            seconds=round(secs, 3),
        )

    @per_video_asset(
        key=VIDEO_FRAMES,
        deps=[RAW_VIDEO, VIDEO_PROBE],
        group_name=GROUP,
        code_version=cv["video_frames"],
        kinds={"parquet", "jpeg"},
        check_specs=[per_video_check_spec("video_frame_count", VIDEO_FRAMES,
                                          description=f"min({cfg.max_video_frames}, duration x {cfg.video_fps:g}) "
                                                      "frames (at least 1)")],
        description=f"Whole-video frames at {cfg.video_fps:g} fps (at most {cfg.max_video_frames}), "
        f"{cfg.frame_size}px JPEG (curation.frames). video_frames/<key>.parquet.",
    )
    def video_frames(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        from curation.frames import sample_video_frames

        entry = _source(context, lake)
        key = context.partition_key
        t0 = time.perf_counter()
        with _video_failure(context, entry, "video frame sampling"), _local_video(context, entry, lake) as path:
            table = sample_video_frames(path, fps=cfg.video_fps, max_frames=cfg.max_video_frames,
                                        size=cfg.frame_size, jpeg_quality=cfg.jpeg_quality,
                                        progress=progress(context))
        secs = time.perf_counter() - t0
        out = lake.layer_url("video_frames", key)
        version, nbytes = write_table(out, table, lake.settings())
        return layer_result(
            out, version, checks=[video_frames_check(table.num_rows, _read_json(lake, "probe", key), cfg)],
            num_frames=table.num_rows,
            bytes=nbytes,
            seconds=round(secs, 3),
        )

    assets_ = [VIDEO_SOURCE_SPEC, raw_video, video_probe, video_shots, video_clips, clip_frames, video_frames]

    if cfg.write_clip_files:

        @per_video_asset(
            key=CLIP_FILES,
            deps=[RAW_VIDEO, VIDEO_CLIPS],
            group_name=GROUP,
            code_version=cv["clip_files"],
            kinds={"video"},
            check_specs=[per_video_check_spec("clip_files_exist", CLIP_FILES,
                                              description="the committed index names one existing file per clip")],
            description="Every clip cut into its own MP4 (curation.clipfiles.write_clip_set): "
            "clip_files/<key>/<version>/<index>.mp4, committed by clip_files/<key>/index.json written last.",
        )
        def clip_files(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
            from curation.clipfiles import write_clip_set
            from curation.schemas import table_to_clips

            entry = _source(context, lake)
            key = context.partition_key
            clips = table_to_clips(_read_table(lake, "clips", key))
            # one versioned set, committed by its index.json: a failure leaves the previous set intact
            with _video_failure(context, entry, "clip cutting"), _local_video(context, entry, lake) as path:
                index, sha = write_clip_set(path, clips, layout.clip_files_dir(lake.storage_root, key),
                                            lake.settings(), index_extra={"partition": key})
            missing = [r["clip_index"] for r in index["clips"] if not lio.exists(r["url"], lake.settings())]
            missing += sorted({c.index for c in clips} - {r["clip_index"] for r in index["clips"]})
            exist = AssetCheckResult(check_name="clip_files_exist", passed=not missing,
                                     metadata={"missing": str(missing[:20]), "num_clips": len(clips)})
            return layer_result(layout.clip_files_index_path(lake.storage_root, key), sha, checks=[exist],
                                num_files=len(index["clips"]), set_version=index["version"])

        assets_.append(clip_files)

    return Definitions(assets=assets_)


# ---------------------------------------------------------------------------------------------
# pure check logic (also used by tests)
# ---------------------------------------------------------------------------------------------
def tile_problems(spans: list[tuple[int, int]], frame_count: int) -> list[str]:
    """Problems with half-open frame spans [start, end) that should tile [0, frame_count)."""
    problems = []
    if not spans:
        return [f"no shots for {frame_count} frames"]
    if spans[0][0] != 0:
        problems.append(f"first shot starts at frame {spans[0][0]}, not 0")
    for i, (a, b) in enumerate(spans):
        if b <= a:
            problems.append(f"shot {i} is empty or reversed: [{a}, {b})")
        if i and a != spans[i - 1][1]:
            kind = "gap" if a > spans[i - 1][1] else "overlap"
            problems.append(f"{kind} between shot {i - 1} (ends {spans[i - 1][1]}) and shot {i} (starts {a})")
    if spans[-1][1] != frame_count:
        problems.append(f"last shot ends at frame {spans[-1][1]}, video has {frame_count} frames")
    return problems


def clip_problems(clips, shots_by_index: dict, min_s: float, max_s: float) -> list[str]:
    problems = []
    for c in clips:
        d = c.end_s - c.start_s
        if d < min_s - _EPS or d > max_s + _EPS:
            problems.append(f"clip {c.index} lasts {d:.3f}s, outside [{min_s:g}, {max_s:g}]")
        s = shots_by_index.get(c.shot_index)
        if s is None:
            problems.append(f"clip {c.index} names unknown shot {c.shot_index}")
        elif c.start_frame < s.start_frame or c.end_frame > s.end_frame:
            problems.append(f"clip {c.index} [{c.start_frame}, {c.end_frame}) leaves shot {s.index} "
                            f"[{s.start_frame}, {s.end_frame})")
    return problems


def _result(name: str, problems: list[str], **metadata) -> AssetCheckResult:
    return AssetCheckResult(check_name=name, passed=not problems,
                            metadata={**metadata, "problems": "; ".join(problems[:10]) or "none"})


def probe_check(d: dict) -> AssetCheckResult:
    """probe_is_sane: duration, fps, frame count and size positive; duration x fps ~ frame count."""
    problems = []
    if not d.get("duration_s", 0) > 0:
        problems.append(f"duration_s={d.get('duration_s')}")
    if not 0 < d.get("fps", 0) <= 1000:
        problems.append(f"fps={d.get('fps')}")
    if not d.get("frame_count", 0) >= 1:
        problems.append(f"frame_count={d.get('frame_count')}")
    if not (d.get("width", 0) > 0 and d.get("height", 0) > 0):
        problems.append(f"size={d.get('width')}x{d.get('height')}")
    if d.get("duration_s", 0) > 0 and d.get("fps", 0) > 0:
        implied = d["duration_s"] * d["fps"]
        if abs(implied - d.get("frame_count", 0)) > max(2.0, 0.02 * implied):
            problems.append(f"duration*fps={implied:.1f} vs frame_count={d.get('frame_count')}")
    return _result("probe_is_sane", problems)


def shots_check(shots, frame_count: int) -> AssetCheckResult:
    """shots_tile_video: the shots tile [0, frame_count) in order, each with start_s < end_s."""
    problems = tile_problems([(s.start_frame, s.end_frame) for s in shots], frame_count)
    problems += [f"shot {s.index}: start_s {s.start_s} >= end_s {s.end_s}" for s in shots if not s.start_s < s.end_s]
    return _result("shots_tile_video", problems, num_shots=len(shots), frame_count=frame_count)


def clips_check(clips, shots, cfg: CurationConfig) -> AssetCheckResult:
    """clips_within_bounds: every clip within [min_clip_s, max_clip_s] and inside one shot."""
    problems = clip_problems(clips, {s.index: s for s in shots}, cfg.min_clip_s, cfg.max_clip_s)
    return _result("clips_within_bounds", problems, num_clips=len(clips))


def clip_frames_check(clips, frame_clip_indices: list[int], cfg: CurationConfig) -> AssetCheckResult:
    """clip_frame_counts: frames_per_clip frames per clip (all frames of a shorter clip), no unknown clip."""
    per_clip: dict[int, int] = {}
    for ci in frame_clip_indices:
        per_clip[int(ci)] = per_clip.get(int(ci), 0) + 1
    want = {c.index: min(cfg.frames_per_clip, c.end_frame - c.start_frame) for c in clips}
    problems = [f"clip {i}: {per_clip.get(i, 0)} frames, expected {w}"
                for i, w in want.items() if per_clip.get(i, 0) != w]
    problems += [f"frames of unknown clip {i}" for i in sorted(set(per_clip) - set(want))]
    problems += [] if clips else ["no clips"]
    return _result("clip_frame_counts", problems, num_frames=len(frame_clip_indices), expected=sum(want.values()))


def video_frames_check(num_frames: int, probe: dict, cfg: CurationConfig) -> AssetCheckResult:
    """video_frame_count: min(max_video_frames, duration x fps) frames, at least 1 (one frame of rounding allowed
    at the end: frames are sampled at t = i / fps for i < duration x fps)."""
    expected = min(expected_video_frames(float(probe["duration_s"]), cfg), int(probe["frame_count"]))
    ok = num_frames == expected or (expected < cfg.max_video_frames and abs(num_frames - expected) <= 1
                                    and num_frames >= 1)
    problems = [] if ok else [f"{num_frames} frames, expected {expected}"]
    return _result("video_frame_count", problems, num_frames=num_frames, expected=expected,
                   duration_s=float(probe["duration_s"]))


defs = build_curation_defs()
