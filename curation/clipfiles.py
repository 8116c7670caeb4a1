"""Optional per-clip MP4 files, cut with ffmpeg-python driving the bundled ffmpeg binary.

* When the clip starts on a keyframe and ends on one (or at the end of the video) the packets are
  stream-copied (fast, lossless, exact: packets are cut in decode order, so with B-frames only a cut
  at a keyframe keeps exactly the clip's frames); audio, if any, is copied too.
* Otherwise the clip is re-encoded (libx264, ``-preset veryfast -crf 18``, AAC audio) with an accurate
  input seek, so the first frame is exactly ``clip.start_frame``.
* Either way exactly ``clip.num_frames`` video frames are written (``-frames:v``).

The output appears atomically: ffmpeg writes a temporary hidden file next to a local destination (or
in the temp folder for a remote ``s3://`` URL, then one upload), which is renamed only on success.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np

from longvila.errors import VideoError
from longvila.io import get_fs, is_remote

from .clips import Clip
from .video import check_file, ffmpeg_exe, frame_index

CODE_VERSION = "clipfiles-v1"
# re-encoding seeks the input this far before the keyframe that precedes the clip
REENCODE_SEEK_MARGIN_S = 2.0


def keyframe_times(path: str) -> list[float]:
    """Presentation times (s, from the first frame) of the keyframes of the first video stream."""
    idx = frame_index(path)
    t = idx.times()
    return [float(t[i]) for i in idx.keyframe_numbers()]


def write_clip_file(src_path: str, clip: Clip, dst_url: str, keyframes: list[float] | None = None,
                    crf: int = 18, preset: str = "veryfast") -> dict:
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

    remote = is_remote(dst_url)
    if remote:
        fd, tmp = tempfile.mkstemp(prefix=".clip-", suffix=".mp4")
        os.close(fd)
    else:
        dst = Path(dst_url[len("file://"):] if str(dst_url).startswith("file://") else dst_url)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(dst.parent / f".{dst.stem}.tmp-{uuid.uuid4().hex[:12]}.mp4")
    try:
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
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()[-600:]
            raise VideoError(src_path, f"ffmpeg could not write clip {clip.index}: {err}")
        size = os.path.getsize(tmp)
        if size == 0:
            raise VideoError(src_path, f"ffmpeg wrote an empty clip {clip.index}")
        if remote:
            fs, rpath = get_fs(dst_url)
            fs.put_file(tmp, rpath)
        else:
            os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"mode": mode, "dst": str(dst_url), "frames": n, "start_s": round(start_s, 6),
            "duration_s": round(end_s - start_s, 6), "bytes": size}
