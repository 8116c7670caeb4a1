"""Shared decoding helpers (PyAV and the bundled ffmpeg binary) with bad-input handling.

Everything here works on a *local* path (callers use ``longvila.io.local_copy`` for remote URLs) and
raises ``longvila.errors.VideoError(path, reason)`` for unusable inputs.

Frame numbering convention used across ``curation``: frame ``i`` is the ``i``-th frame in
*presentation order* of the first video stream (0-based), and its time is its presentation timestamp
minus the stream's first presentation timestamp (so the first frame is at 0.0 s).

Time budgets: every decode loop checks a ``Deadline`` once per packet and every ffmpeg process runs
under one (``run_process`` kills its process group when the budget is spent). A budget is
``LONGVILA_MEDIA_TIMEOUT_S + LONGVILA_MEDIA_TIMEOUT_PER_VIDEO_S x duration`` (``longvila.settings.Timeouts``);
running past it raises ``MediaTimeout``, a VideoError naming the file, the work and the budget. A hang
inside a single native call (one packet) is not interruptible from Python: the run's max runtime bounds it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

import numpy as np

from longvila.errors import VideoError
from longvila.settings import Timeouts


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


class MediaTimeout(VideoError):
    """Decoding or an ffmpeg process ran past its time budget."""


class Deadline:
    """The time budget of one pass of media work over `path`, checked by its loop once per packet."""

    def __init__(self, budget_s: float, path: str, what: str):
        self.budget_s = float(budget_s)
        self.path = os.fspath(path)
        self.what = what
        self._end = time.monotonic() + self.budget_s

    @classmethod
    def for_video(cls, path: str, duration_s: float | None, what: str) -> "Deadline":
        """Budget scaled by the duration of the video (or clip) the work covers (LONGVILA_MEDIA_TIMEOUT_*)."""
        return cls(Timeouts.from_env().media_budget_s(duration_s), path, what)

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def error(self) -> MediaTimeout:
        return MediaTimeout(self.path, f"{self.what} ran past its time budget of {self.budget_s:.1f} s "
                                       "(LONGVILA_MEDIA_TIMEOUT_S + LONGVILA_MEDIA_TIMEOUT_PER_VIDEO_S x duration)")

    def check(self) -> None:
        if time.monotonic() > self._end:
            raise self.error()


def header_duration_s(container, stream) -> float | None:
    """Duration the container header declares for `stream` (None if it declares none)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1e6
    return None


def decode_stream(container, stream, deadline: Deadline):
    """``container.decode(stream)`` with the deadline checked before every packet."""
    for pkt in container.demux(stream):
        deadline.check()
        yield from pkt.decode()


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


def frame_index(path: str, container=None, strict: bool = True, deadline: Deadline | None = None) -> FrameIndex:
    """Demux the first video stream and return its presentation-order FrameIndex.

    Packets without a pts (rare: raw streams) get dts or a running count. Raises VideoError when the
    stream has no packets, or (``strict``) when demuxing stops early or yields fewer packets than the
    header's frame count (a truncated file whose index survived, e.g. a cut "faststart" MP4);
    MediaTimeout past `deadline` (default: budgeted by the header's duration).
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
    deadline = deadline or Deadline.for_video(path, header_duration_s(container, stream), "demuxing")
    failed = False
    try:
        try:
            for pkt in container.demux(stream):
                deadline.check()
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


def run_process(cmd: list[str], deadline: Deadline) -> subprocess.CompletedProcess:
    """Run an external process (own process group) and wait for it within `deadline`; past it, the whole
    group is killed and MediaTimeout raised. Returns the CompletedProcess (stdout/stderr as bytes)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=deadline.remaining())
    except subprocess.TimeoutExpired:
        raise deadline.error() from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_ffmpeg(*args: str, what: str = "ffmpeg", deadline: Deadline | None = None) -> None:
    """Run the bundled ffmpeg binary quietly (``-y``) within `deadline` (default: the fixed budget),
    raising RuntimeError with its stderr on failure and MediaTimeout past the deadline."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    proc = run_process(cmd, deadline or Deadline.for_video(what, None, what))
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {proc.stderr.decode('utf-8', 'replace').strip()[-2000:]}")
