"""Frame sampling for the vision encoder: uniform frames per clip, or uniform frames over a whole video.

Decoding strategy (``decode_frames_at``): demux once to get the presentation-order index and the
keyframes, then walk the sorted target frames with one threaded PyAV decoder. For each target the
decoder either keeps decoding forward or, when the keyframe at or before the target lies more than
``SEEK_MIN_GAP`` frames ahead of the current position, seeks to that keyframe. So no frame is ever
decoded twice, nothing after the last target is decoded, and GOPs that contain no target are skipped
entirely. Inside the decoded stretches, non-reference frames (most B-frames) that are not targets are
not decoded at all (``skip_frame=NONREF`` per packet; targets and every frame they depend on are).
Only the selected frames are converted to RGB, and the conversion is fused with the resize (swscale),
at the target size. Every decode loop checks a ``curation.video.Deadline`` per packet.

Resize policy: **aspect-preserving resize so that the longer side equals ``size``, then pad to a
``size x size`` square**, centred, with mid-grey (127, 127, 127) — the pixel value SigLIP normalises to
zero, as LLaVA's "pad" image aspect mode does — so nothing in the frame is cropped away (captions and
on-screen text at the edges survive). ``resize_mode="crop"`` gives a centre crop instead. Display
rotation (probe ``rotation``) is applied before resizing.
"""

from __future__ import annotations

import io
import os
from typing import Iterator

import numpy as np

from longvila.errors import VideoError
from longvila.progress import Throttled

from .clips import Clip
from .video import Deadline, FrameIndex, _short, frame_index, open_video

CODE_VERSION = "frames-v1"
PAD_COLOUR = (127, 127, 127)
# a seek flushes the (frame-threaded) decoder; below this many skipped frames decoding on is cheaper
SEEK_MIN_GAP = 48


def code_version(**opts) -> str:
    return CODE_VERSION + (":" + ",".join(f"{k}={opts[k]}" for k in sorted(opts)) if opts else "")


def _decode_packets(container, stream, target_pts: set, skip_nonref: bool, deadline: Deadline):
    """Decode packet by packet (checking `deadline`); non-reference frames that are not targets are not
    decoded at all.

    ``skip_frame = NONREF`` is set per packet (frame-threaded decoders copy it at submission), so a
    target is always decoded, and so is every frame other frames depend on.
    """
    cc = stream.codec_context
    for pkt in container.demux(stream):
        deadline.check()
        if skip_nonref:
            cc.skip_frame = "DEFAULT" if (pkt.pts is None or pkt.pts in target_pts) else "NONREF"
        yield from cc.decode(pkt)


def decode_frames_at(path: str, frame_numbers, index: FrameIndex | None = None, seek: bool = True,
                     min_seek_gap: int | None = None, skip_nonref: bool = True,
                     deadline: Deadline | None = None) -> Iterator[tuple[int, float, object]]:
    """Yield ``(frame_number, pts_s, av.VideoFrame)`` for each requested frame, in increasing order.

    Duplicates are removed and numbers outside ``[0, frame_count)`` ignored. A requested frame that
    cannot be decoded (corrupt packets) is replaced by the next decodable frame (its true number is
    yielded). Raises VideoError when nothing can be decoded. ``seek=False`` decodes sequentially from
    the start; ``min_seek_gap`` (default SEEK_MIN_GAP) is the number of frames a seek must skip;
    ``skip_nonref`` skips decoding the non-reference frames (most B-frames) that are not requested.
    MediaTimeout past `deadline` (default: budgeted by the video's duration).
    """
    import av

    idx = index or frame_index(path)
    gap = SEEK_MIN_GAP if min_seek_gap is None else int(min_seek_gap)
    targets = sorted({int(f) for f in frame_numbers if 0 <= int(f) < idx.count})
    if not targets:
        return
    times = idx.times()
    deadline = deadline or Deadline.for_video(path, float(times[-1]), "frame decoding")
    pts_to_num = {int(p): i for i, p in enumerate(idx.pts)}
    target_pts = {int(idx.pts[t]) for t in targets}
    keyframes = idx.keyframe_numbers()
    if len(keyframes) == 0 or keyframes[0] != 0:
        keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
    container, stream = open_video(path)
    stream.thread_type = "AUTO"
    yielded = 0
    try:
        pos = -1  # frame number of the last decoded frame
        frames = _decode_packets(container, stream, target_pts, skip_nonref, deadline)
        ti = 0
        while ti < len(targets):
            t = targets[ti]
            seeked = False
            back = 0
            if seek:
                ki = int(np.searchsorted(keyframes, t, side="right") - 1)
                kf = int(keyframes[ki])
                # seek only when it skips enough frames to pay for flushing the threaded decoder
                if kf > 0 and kf - (pos + 1) > gap:
                    container.seek(int(idx.pts[kf]), stream=stream, backward=True, any_frame=False)
                    frames = _decode_packets(container, stream, target_pts, skip_nonref, deadline)
                    pos = kf - 1  # nothing before kf will be used
                    seeked = True
            got = None
            try:
                while True:
                    first_after_seek = seeked
                    overshot = False
                    for fr in frames:
                        num = pts_to_num.get(fr.pts) if fr.pts is not None else None
                        if num is None:
                            if seek or skip_nonref:
                                # a frame we cannot place: restart, counting every decoded frame
                                raise _NoPts()
                            num = pos + 1
                        if first_after_seek:
                            first_after_seek = False
                            if num > t:
                                overshot = True  # the demuxer landed after the keyframe (no index)
                                break
                        if num < pos + 1 and seek:
                            continue  # leading frames after a seek, already behind us
                        pos = num
                        if num >= t:
                            got = (num, fr)
                            break
                    if first_after_seek:
                        overshot = True  # the seek landed at the end of the stream: nothing decoded
                    if not overshot:
                        break
                    # seek again to an earlier keyframe (1, 2, 4, ... keyframes back; finally the start)
                    back = max(1, 2 * back)
                    ki2 = max(0, ki - back)
                    if ki2 == 0:
                        container.seek(0)
                        pos, seeked = -1, False
                    else:
                        container.seek(int(idx.pts[keyframes[ki2]]), stream=stream, backward=True,
                                       any_frame=False)
                        pos, seeked = int(keyframes[ki2]) - 1, True
                    frames = _decode_packets(container, stream, target_pts, skip_nonref, deadline)
            except av.error.FFmpegError as e:
                if yielded == 0 and got is None:
                    raise VideoError(path, f"no decodable video frames ({_short(e)})") from None
                return  # corrupt tail: stop with what we have
            if got is None:
                break  # end of stream
            num, fr = got
            yield num, float(times[num]), fr
            yielded += 1
            while ti < len(targets) and targets[ti] <= num:
                ti += 1
    except _NoPts:
        container.close()
        yield from decode_frames_at(path, [t for t in targets if t > pos], index=idx, seek=False,
                                    skip_nonref=False, deadline=deadline)
        return
    finally:
        container.close()
    if yielded == 0:
        raise VideoError(path, "no decodable video frames")


class _NoPts(Exception):
    pass


def _to_square_rgb(frame, size: int, resize_mode: str = "pad"):
    """Resize/pad (or crop) an av.VideoFrame to a size x size PIL RGB image in one swscale pass."""
    from PIL import Image

    rot = 0
    try:
        rot = int(round(frame.rotation or 0)) % 360
    except Exception:  # noqa: BLE001
        rot = 0
    w, h = frame.width, frame.height
    if rot in (90, 270):
        w, h = h, w  # displayed geometry
    if resize_mode == "pad":
        s = size / max(w, h)
    elif resize_mode == "crop":
        s = size / min(w, h)
    else:
        raise ValueError(f"resize_mode must be 'pad' or 'crop', got {resize_mode!r}")
    tw, th = max(1, round(w * s)), max(1, round(h * s))
    cw, ch = (th, tw) if rot in (90, 270) else (tw, th)  # coded-orientation target size
    img = frame.reformat(width=cw, height=ch, format="rgb24", interpolation="AREA").to_image()
    if rot:
        # display matrix rotation is counter-clockwise; PIL rotate() is counter-clockwise too
        img = img.rotate(rot, expand=True)
    if resize_mode == "pad":
        if (tw, th) == (size, size):
            return img
        canvas = Image.new("RGB", (size, size), PAD_COLOUR)
        canvas.paste(img, ((size - tw) // 2, (size - th) // 2))
        return canvas
    left, top = (tw - size) // 2, (th - size) // 2
    return img.crop((left, top, left + size, top + size))


def _jpeg(img, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def uniform_in_clip(start: int, end: int, k: int) -> list[int]:
    """k frame numbers at the centres of k equal parts of [start, end) (all frames if fewer than k)."""
    n = end - start
    if n <= 0:
        return []
    k = min(k, n)
    return [start + int((2 * j + 1) * n // (2 * k)) for j in range(k)]


def sample_clip_frames(path: str, clips: list[Clip], frames_per_clip: int = 8, size: int = 384,
                       jpeg_quality: int = 90, progress=None, resize_mode: str = "pad"):
    """``frames_per_clip`` uniformly spaced frames of every clip as a CLIP_FRAMES table (JPEG bytes).

    One decoding pass over the video (keyframe-aware, see module doc). A clip with fewer frames than
    ``frames_per_clip`` contributes all its frames.
    """
    import pyarrow as pa

    from .schemas import CLIP_FRAMES

    if frames_per_clip < 1 or size < 1:
        raise ValueError("frames_per_clip and size must be >= 1")
    path = os.fspath(path)
    idx = frame_index(path)
    wanted: dict[int, list[tuple[int, int]]] = {}
    for c in clips:
        if c.start_frame < 0 or c.end_frame > idx.count or c.end_frame <= c.start_frame:
            raise VideoError(path, f"clip {c.index} [{c.start_frame}, {c.end_frame}) is outside the video's "
                                   f"{idx.count} frames")
        for j, f in enumerate(uniform_in_clip(c.start_frame, c.end_frame, frames_per_clip)):
            wanted.setdefault(f, []).append((c.index, j))
    rows: dict[str, list] = {n: [] for n in CLIP_FRAMES.names}
    prog = Throttled(progress)
    total = len(wanted)
    done = 0
    pending = sorted(wanted)
    pi = 0
    for num, pts_s, fr in decode_frames_at(path, pending, index=idx):
        img = _to_square_rgb(fr, size, resize_mode)
        data = _jpeg(img, jpeg_quality)
        # every pending target <= num is served by this frame (normally exactly one, == num)
        while pi < len(pending) and pending[pi] <= num:
            for clip_index, j in wanted[pending[pi]]:
                rows["clip_index"].append(clip_index)
                rows["frame_index_in_clip"].append(j)
                rows["frame_number"].append(num)
                rows["pts_s"].append(round(pts_s, 6))
                rows["width"].append(img.width)
                rows["height"].append(img.height)
                rows["jpeg"].append(data)
            pi += 1
            done += 1
        prog(done, total, "clip frames")
    table = pa.Table.from_pydict(rows, schema=CLIP_FRAMES)
    return table.sort_by([("clip_index", "ascending"), ("frame_index_in_clip", "ascending")])


def video_sample_numbers(index: FrameIndex, fps: float = 1.0, max_frames: int = 256) -> list[int]:
    """Frame numbers for sampling at `fps` (frame at or before each time), or `max_frames` uniform ones."""
    if fps <= 0 or max_frames < 1:
        raise ValueError("fps must be > 0 and max_frames >= 1")
    times = index.times()
    n = index.count
    if n == 0:
        return []
    step = float(np.median(np.diff(times))) if n > 1 else 0.0
    duration = float(times[-1]) + step
    k = int(np.floor(duration * fps + 1e-9)) or 1
    if k > max_frames:
        ts = (np.arange(max_frames) + 0.5) * duration / max_frames
    else:
        ts = np.arange(k) / fps
    nums = np.searchsorted(times, ts + 1e-9, side="right") - 1
    return sorted({int(x) for x in np.clip(nums, 0, n - 1)})


def sample_video_frames(path: str, fps: float = 1.0, max_frames: int = 256, size: int = 384,
                        jpeg_quality: int = 90, progress=None, resize_mode: str = "pad"):
    """Frames at `fps` over the whole video (at most `max_frames`, then uniform) as a VIDEO_FRAMES table."""
    import pyarrow as pa

    from .schemas import VIDEO_FRAMES

    path = os.fspath(path)
    idx = frame_index(path)
    nums = video_sample_numbers(idx, fps, max_frames)
    rows: dict[str, list] = {n: [] for n in VIDEO_FRAMES.names}
    prog = Throttled(progress)
    for num, pts_s, fr in decode_frames_at(path, nums, index=idx):
        img = _to_square_rgb(fr, size, resize_mode)
        rows["frame_number"].append(num)
        rows["pts_s"].append(round(pts_s, 6))
        rows["width"].append(img.width)
        rows["height"].append(img.height)
        rows["jpeg"].append(_jpeg(img, jpeg_quality))
        prog(len(rows["jpeg"]), len(nums), "video frames")
    return pa.Table.from_pydict(rows, schema=VIDEO_FRAMES)


def decode_jpeg_frames(table) -> list:
    """PIL RGB images from the ``jpeg`` column of a CLIP_FRAMES / VIDEO_FRAMES table (row order)."""
    from PIL import Image

    out = []
    for b in table.column("jpeg").to_pylist():
        im = Image.open(io.BytesIO(b))
        im.load()
        out.append(im.convert("RGB"))
    return out
