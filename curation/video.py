"""Shared decoding helpers (PyAV and the bundled ffmpeg binary) with bad-input handling.

Everything here works on a *local* path (callers use ``longvila.io.local_copy`` for remote URLs) and
raises ``longvila.errors.VideoError(path, reason)`` for unusable inputs.

Frame numbering convention used across ``curation``: frame ``i`` is the ``i``-th frame in
*presentation order* of the first video stream (0-based), and its time is its presentation timestamp
minus the stream's first presentation timestamp (so the first frame is at 0.0 s).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
import numpy as np

from longvila.errors import VideoError


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def check_file(path: str) -> int:
    """Existence / size checks shared by every entry point; returns the size in bytes."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise VideoError(p, "file does not exist")
    if not os.path.isfile(p):
        raise VideoError(p, "not a regular file")
    size = os.path.getsize(p)
    if size == 0:
        raise VideoError(p, "file is empty (0 bytes)")
    return size


def open_video(path: str):
    """Open `path` with PyAV and return (container, first video stream); VideoError if impossible."""
    import av

    check_file(path)
    try:
        container = av.open(os.fspath(path), metadata_errors="ignore")
    except av.error.FFmpegError as e:  # InvalidDataError, etc.
        raise VideoError(path, f"cannot open as a media container ({_short(e)})") from None
    except Exception as e:  # noqa: BLE001 - anything else PyAV raises on garbage
        raise VideoError(path, f"cannot open as a media container ({_short(e)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        raise VideoError(path, f"no video stream (streams: {', '.join(kinds) or 'none'})")
    return container, container.streams.video[0]


def _short(e: BaseException) -> str:
    s = str(e).strip() or type(e).__name__
    return s if len(s) < 300 else s[:300] + "..."


@dataclass
class FrameIndex:
    """Presentation-order index of the first video stream, built by demuxing (no decoding).

    pts: presentation timestamps in stream time-base units, sorted; key: keyframe flag per frame;
    time_base: seconds per unit; start_pts: pts of frame 0.
    """

    pts: np.ndarray
    key: np.ndarray
    time_base: float
    start_pts: int

    @property
    def count(self) -> int:
        return int(len(self.pts))

    def times(self) -> np.ndarray:
        """Seconds of every frame relative to frame 0."""
        return (self.pts - self.start_pts).astype(np.float64) * self.time_base

    def keyframe_numbers(self) -> np.ndarray:
        return np.flatnonzero(self.key)


# a file whose header lists more frames than can be read (beyond this slack) is truncated
TRUNCATION_SLACK = 2


def truncation_error(path: str, header_frames: int, readable: int) -> VideoError:
    return VideoError(path, f"truncated or corrupt: the header lists {header_frames} video frames but only "
                            f"{readable} can be read")


def frame_index(path: str, container=None, strict: bool = True) -> FrameIndex:
    """Demux the first video stream and return its presentation-order FrameIndex.

    Packets without a pts (rare: raw streams) get dts or a running count. Raises VideoError when the
    stream has no packets, or (``strict``) when demuxing stops early or yields fewer packets than the
    header's frame count (a truncated file whose index survived, e.g. a cut "faststart" MP4).
    """
    import av

    own = container is None
    if own:
        container, stream = open_video(path)
    else:
        stream = container.streams.video[0]
    pts: list[int] = []
    key: list[bool] = []
    header_frames = int(stream.frames or 0)
    failed = False
    try:
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0 and pkt.pts is None and pkt.dts is None:
                    continue  # flush packet
                t = pkt.pts if pkt.pts is not None else pkt.dts
                if t is None:
                    t = pts[-1] + 1 if pts else 0
                pts.append(int(t))
                key.append(bool(pkt.is_keyframe))
        except av.error.FFmpegError as e:
            if not pts:
                raise VideoError(path, f"demuxing failed ({_short(e)})") from None
            failed = True  # truncated tail
        tb = float(stream.time_base) if stream.time_base else 1.0
    finally:
        if own:
            container.close()
    if not pts:
        raise VideoError(path, "video stream has no packets")
    if strict and (failed or (header_frames and len(pts) < header_frames - TRUNCATION_SLACK)):
        raise truncation_error(path, header_frames, len(pts))
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    p = np.asarray(pts, dtype=np.int64)[order]
    k = np.asarray(key, dtype=bool)[order]
    return FrameIndex(pts=p, key=k, time_base=tb, start_pts=int(p[0]))


def run_ffmpeg(*args: str, what: str = "ffmpeg") -> None:
    """Run the bundled ffmpeg binary quietly (``-y``), raising RuntimeError with its stderr on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {proc.stderr.decode('utf-8', 'replace').strip()[-2000:]}")
