"""Decode a video once, straight to tiny RGB frames, with a deadline.

The bundled ffmpeg binary decodes the first video stream (all frames, presentation order, no rate
conversion: ``-fps_mode passthrough``), scales each frame to ``width x height`` (48x27 by default: the
input size of TransNetV2, so the cascade and the learned model share one decode; `SCALERS`) and pipes raw
RGB24.
``skip_loop_filter`` drops H.264/HEVC deblocking, which a 48x27 picture cannot show and which costs a
good part of the decode time. `iter_frames` yields ``(k, height, width, 3)`` uint8 chunks; Python does no
per-frame work. A ``curation.video.Deadline`` kills ffmpeg when it passes and raises its ``MediaTimeout``.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Iterator

import numpy as np

from longvila.errors import VideoError

from ..video import Deadline, ffmpeg_exe


# Scalers: "exact" is ffmpeg's default (bicubic, what TransNetV2's authors feed it); "fast" first shrinks
# with a 2-tap filter to 4x the target size, then averages 4x4 areas: about a third of the default's
# CPU cost when decoding 640x360 to 48x27, close to an area average.
SCALERS = ("fast", "exact")


def _scale_filter(width: int, height: int, scaler: str) -> str:
    if scaler == "exact":
        return f"scale={width}:{height}"
    if scaler == "fast":
        return (f"scale='min(iw,{4 * width})':'min(ih,{4 * height})':flags=fast_bilinear,"
                f"scale={width}:{height}:flags=area")
    raise ValueError(f"scaler must be one of {SCALERS}, got {scaler!r}")


def _command(path: str, width: int, height: int, skip_loop_filter: bool, scaler: str) -> list[str]:
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
            *(["-skip_loop_filter", "all"] if skip_loop_filter else []),
            "-i", os.fspath(path), "-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough",
            "-vf", _scale_filter(width, height, scaler), "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"]


def iter_frames(path: str, width: int = 48, height: int = 27, chunk: int = 512, skip_loop_filter: bool = True,
                scaler: str = "exact", deadline: Deadline | None = None) -> Iterator[np.ndarray]:
    """Yield chunks of decoded frames (uint8, ``(k, height, width, 3)``, ``k <= chunk``).

    Raises VideoError when ffmpeg fails before the first frame, and the deadline's MediaTimeout when it passes
    (ffmpeg is killed, nothing is left running).
    """
    proc = subprocess.Popen(_command(path, width, height, skip_loop_filter, scaler), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    expired = threading.Event()
    timer = None
    if deadline is not None:
        def _kill():
            expired.set()
            proc.kill()
        timer = threading.Timer(deadline.remaining(), _kill)
        timer.daemon = True
        timer.start()
    stderr: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    drain.start()
    frame_bytes = width * height * 3
    buf = bytearray(chunk * frame_bytes)
    view = memoryview(buf)
    total = 0
    try:
        while True:
            got = 0
            while got < len(buf):
                n = proc.stdout.readinto(view[got:])
                if not n:
                    break
                got += n
            k = got // frame_bytes
            if k:
                total += k
                yield np.frombuffer(bytes(view[:k * frame_bytes]), np.uint8).reshape(k, height, width, 3)
            if got < len(buf):
                break
        proc.wait()
        drain.join(timeout=5)
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if expired.is_set():
        raise deadline.error()
    if total == 0:
        err = b"".join(stderr).decode("utf-8", "replace").strip()[-400:]
        raise VideoError(path, "no decodable video frames" + (f" (ffmpeg: {err})" if err else ""))
