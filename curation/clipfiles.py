"""Optional per-clip MP4 files, cut with ffmpeg-python driving the bundled ffmpeg binary.

* When the clip starts on a keyframe and ends on one (or at the end of the video) the packets are
  stream-copied (fast, lossless, exact: packets are cut in decode order, so with B-frames only a cut
  at a keyframe keeps exactly the clip's frames); audio, if any, is copied too.
* Otherwise the clip is re-encoded (libx264, ``-preset veryfast -crf 18``, AAC audio) with an accurate
  input seek, so the first frame is exactly ``clip.start_frame``.
* Either way exactly ``clip.num_frames`` video frames are written (``-frames:v``), by an ffmpeg process
  that runs under a ``curation.video.Deadline`` budgeted by the clip's duration.

Each file appears atomically (``longvila.io.atomic_write``: a temporary sibling renamed on success, or
one upload for a remote ``s3://`` URL). A video's clips are published as one versioned set
(``write_clip_set``): ``<root>/<version>/<index:05d>.mp4`` and then ``<root>/index.json`` naming the
version (the commit). A failed attempt removes only its own version; the committed set stays readable.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import numpy as np

from longvila import io as lio
from longvila.errors import VideoError
from longvila.settings import Settings

from .clips import Clip
from .video import Deadline, check_file, ffmpeg_exe, frame_index, run_process

CODE_VERSION = "clipfiles-v1"
# re-encoding seeks the input this far before the keyframe that precedes the clip
REENCODE_SEEK_MARGIN_S = 2.0


def keyframe_times(path: str) -> list[float]:
    """Presentation times (s, from the first frame) of the keyframes of the first video stream."""
    idx = frame_index(path)
    t = idx.times()
    return [float(t[i]) for i in idx.keyframe_numbers()]


def write_clip_file(src_path: str, clip: Clip, dst_url: str, keyframes: list[float] | None = None,
                    crf: int = 18, preset: str = "veryfast", settings: Settings | None = None) -> dict:
    """Write `clip` of `src_path` to `dst_url` (local path or fsspec URL). Returns a report dict:

    ``{"mode": "copy"|"reencode", "dst": dst_url, "frames": n, "start_s": .., "duration_s": .., "bytes": ..}``
    """
    import ffmpeg

    src_path = os.fspath(src_path)
    check_file(src_path)
    idx = frame_index(src_path)
    if not (0 <= clip.start_frame < clip.end_frame <= idx.count):
        raise VideoError(src_path, f"clip {clip.index} [{clip.start_frame}, {clip.end_frame}) is outside the "
                                   f"video's {idx.count} frames")
    times = idx.times()
    start_s = float(times[clip.start_frame])
    # ffmpeg's input -ss counts from the container's start time, which may differ from the video
    # stream's first timestamp (MPEG-TS starts at ~1.4 s; audio may start before video)
    import av

    with av.open(src_path) as c:
        container_start = c.start_time / 1e6 if c.start_time is not None else 0.0
    rel_start = start_s + idx.start_pts * idx.time_base - container_start
    n = clip.end_frame - clip.start_frame
    fdur = float(times[1] - times[0]) if idx.count > 1 else 0.04
    end_s = float(times[clip.end_frame]) if clip.end_frame < idx.count else float(times[-1]) + fdur
    keyframe_numbers = idx.keyframe_numbers()
    kfs = keyframes if keyframes is not None else [float(times[i]) for i in keyframe_numbers]
    end_t = float(times[clip.end_frame]) if clip.end_frame < idx.count else None
    starts_on_key = any(abs(k - start_s) < fdur / 2 for k in kfs)
    # packets are cut in decode order: with B-frames only a cut at a keyframe (or the end of the file)
    # keeps exactly the clip's frames, so stream copy needs keyframes at both ends
    ends_on_key = end_t is None or any(abs(k - end_t) < fdur / 2 for k in kfs)
    mode = "copy" if (starts_on_key and ends_on_key) else "reencode"

    deadline = Deadline.for_video(src_path, end_s - start_s + REENCODE_SEEK_MARGIN_S, f"cutting clip {clip.index}")
    with lio.atomic_write(dst_url, "wb", settings) as out:
        tmp = out.name  # ffmpeg overwrites the (locked) temporary file in place
        out_seek = None
        if mode == "copy":
            # stream copy starts at the keyframe at or before -ss: aim a quarter frame after it
            ss = rel_start + fdur / 4
        else:
            # re-encode: a coarse input seek to well before the preceding keyframe (demuxers without an
            # index, e.g. MPEG-TS, land only approximately), then an exact output-side seek that drops
            # the decoded frames before the clip (timestamps restart at the input seek point)
            kf = int(np.searchsorted(keyframe_numbers, clip.start_frame, side="right") - 1) if len(
                keyframe_numbers) else -1
            kf_rel = (float(times[keyframe_numbers[kf]]) if kf >= 0 else 0.0) + idx.start_pts * idx.time_base \
                - container_start
            ss = max(0.0, kf_rel - REENCODE_SEEK_MARGIN_S)
            out_seek = rel_start - ss - fdur / 4
        inp = ffmpeg.input(src_path, ss=f"{ss:.6f}") if ss > 0 else ffmpeg.input(src_path)
        out_kw: dict = {"f": "mp4", "frames:v": n, "t": f"{end_s - start_s:.6f}", "map": "0:v:0",
                        "avoid_negative_ts": "make_zero", "movflags": "+faststart"}
        if out_seek is not None and out_seek > 0:
            out_kw["ss"] = f"{out_seek:.6f}"
        if mode == "copy":
            out_kw.update({"c": "copy"})
        else:
            out_kw.update({"c:v": "libx264", "preset": preset, "crf": crf, "pix_fmt": "yuv420p",
                           "c:a": "aac", "b:a": "128k"})
        stream = ffmpeg.output(inp, tmp, **out_kw).global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-y")
        args = ffmpeg.compile(stream, cmd=ffmpeg_exe())
        # ffmpeg-python cannot repeat -map: add the optional audio map before the output name
        k = args.index(tmp)
        args = [*args[:k], "-map", "0:a:0?", *args[k:]]
        proc = run_process(args, deadline)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()[-600:]
            raise VideoError(src_path, f"ffmpeg could not write clip {clip.index}: {err}")
        size = os.path.getsize(tmp)
        if size == 0:
            raise VideoError(src_path, f"ffmpeg wrote an empty clip {clip.index}")
    return {"mode": mode, "dst": str(dst_url), "frames": n, "start_s": round(start_s, 6),
            "duration_s": round(end_s - start_s, 6), "bytes": size}


_VERSION_RE = re.compile(r"^v(\d{20})-[0-9a-f]{8}$")


def _committed(index_url: str, settings: Settings | None) -> dict | None:
    return lio.read_json(index_url, settings) if lio.exists(index_url, settings) else None


def _remove_versions(root_url: str, names: list[str], settings: Settings | None) -> None:
    fs, root = lio.get_fs(root_url, settings)
    for name in names:
        path = f"{root.rstrip('/')}/{name}"
        if fs.exists(path):
            fs.rm(path, recursive=True)


def write_clip_set(src_path: str, clips: list[Clip], root_url: str, settings: Settings | None = None,
                   index_extra: dict | None = None) -> tuple[dict, str]:
    """Cut every clip into ``<root_url>/<version>/<index:05d>.mp4`` and commit the set by writing
    ``<root_url>/index.json`` (``{"version", "clips": [records], **index_extra}``) last.

    Returns (index, sha256 of the index bytes). On any failure only this attempt's version is removed:
    the previously committed set and its index stay intact. After a commit, versions that started
    before the committed one are removed; a version started later (a concurrent writer) is never
    touched, and a writer whose set started before the committed one discards its own set instead of
    committing it (the newest attempt wins)."""
    version = f"v{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    index_url = lio.join(root_url, "index.json")
    try:
        records = []
        for c in clips:
            dst = lio.join(root_url, version, f"{c.index:05d}.mp4")
            records.append({"clip_index": c.index, "url": dst, **write_clip_file(src_path, c, dst, settings=settings)})
        current = _committed(index_url, settings)
        if current is not None and current.get("version", "") > version:
            raise _Superseded(current)
        index = {**(index_extra or {}), "version": version, "clips": records}
        data = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")
        lio.write_bytes(index_url, data, settings)
    except _Superseded as e:
        _remove_versions(root_url, [version], settings)
        data = (json.dumps(e.index, indent=2, sort_keys=True) + "\n").encode("utf-8")
        return e.index, lio.sha256_bytes(data)
    except BaseException:
        _remove_versions(root_url, [version], settings)
        raise
    fs, root = lio.get_fs(root_url, settings)
    fs.invalidate_cache(root)
    older = [n for n in (os.path.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))
             if _VERSION_RE.match(n) and n < version]
    _remove_versions(root_url, older, settings)
    return index, lio.sha256_bytes(data)


class _Superseded(Exception):
    def __init__(self, index: dict):
        self.index = index
