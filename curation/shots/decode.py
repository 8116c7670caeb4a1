"""Decode a video once, straight to tiny frames, with a deadline, while the caller analyses earlier frames.

The bundled ffmpeg binary decodes the first video stream (all frames, presentation order, no rate
conversion: ``-fps_mode passthrough``), scales each frame to ``width x height`` (`SCALERS`) and pipes raw
frames in one of two layouts (`PIX_FMTS`):

* ``yuv420p`` (what the ``fast`` detector reads; half the bytes of RGB and no colour conversion in ffmpeg):
  ``(k, height * 3 // 2, width)`` uint8 chunks in I420 order, rows ``[0, height)`` the luma plane, then
  the two chroma planes (``height/2 x width/2`` each) packed into ``height/4`` rows apiece; `split_i420`
  views them, `i420_to_rgb` converts (BT.601 limited range, as swscale does for untagged video);
* ``rgb24``: ``(k, height, width, 3)``, what TransNetV2 reads.

``skip_loop_filter`` drops H.264/HEVC deblocking, which a 48x27 picture cannot show and which costs a good
part of the decode time. A reader thread drains the pipe into a bounded queue, so ffmpeg keeps decoding
while the caller works on the chunks already read (decode and analysis overlap on two cores; memory stays
bounded by ``queue_chunks`` chunks). Python does no per-frame work. A ``curation.video.Deadline`` kills
ffmpeg when it passes and raises its ``MediaTimeout``; a consumer that stops early kills ffmpeg too.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from typing import Iterator

import numpy as np

from longvila.errors import VideoError

from ..video import Deadline, ffmpeg_exe

# Scalers: "area" averages the source pixels under each target pixel (no aliasing, so textures that move
# do not flicker; as cheap as "fast" when shrinking 640x360 to 48x28); "exact" is ffmpeg's default bicubic
# (what TransNetV2's authors feed it); "fast" shrinks with a 2-tap filter to 4x the target size first, then
# averages 4x4 areas.
SCALERS = ("area", "fast", "exact")
PIX_FMTS = ("yuv420p", "rgb24")


def _scale_filter(width: int, height: int, scaler: str) -> str:
    if scaler == "exact":
        return f"scale={width}:{height}"
    if scaler == "area":
        return f"scale={width}:{height}:flags=area"
    if scaler == "fast":
        return (f"scale='min(iw,{4 * width})':'min(ih,{4 * height})':flags=fast_bilinear,"
                f"scale={width}:{height}:flags=area")
    raise ValueError(f"scaler must be one of {SCALERS}, got {scaler!r}")


def _command(path: str, width: int, height: int, skip_loop_filter: bool, scaler: str,
             pix_fmt: str) -> list[str]:
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
            *(["-skip_loop_filter", "all"] if skip_loop_filter else []),
            "-i", os.fspath(path), "-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough",
            "-vf", _scale_filter(width, height, scaler), "-pix_fmt", pix_fmt, "-f", "rawvideo",
            "-flush_packets", "0", "pipe:1"]


def frame_shape(width: int, height: int, pix_fmt: str) -> tuple[int, ...]:
    """Shape of one decoded frame in `pix_fmt` (I420 needs ``height % 4 == 0`` and an even width)."""
    if pix_fmt == "rgb24":
        return (height, width, 3)
    if pix_fmt == "yuv420p":
        if height % 4 or width % 2:
            raise ValueError(f"yuv420p frames need a height divisible by 4 and an even width, got {width}x{height}")
        return (height * 3 // 2, width)
    raise ValueError(f"pix_fmt must be one of {PIX_FMTS}, got {pix_fmt!r}")


def split_i420(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y ``(n, h, w)``, U and V ``(n, h/2, w/2)`` planes of I420 frames ``(n, 3h/2, w)``."""
    n, rows, w = frames.shape
    h = rows * 2 // 3
    return (frames[:, :h], frames[:, h:h + h // 4].reshape(n, h // 2, w // 2),
            frames[:, h + h // 4:].reshape(n, h // 2, w // 2))


_YUV_TO_RGB = np.array([[1.164, 0.0, 1.596], [1.164, -0.392, -0.813], [1.164, 2.017, 0.0]], np.float32)


def i420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Float32 RGB ``(n, 3, h, w)`` in [0, 255] of same-sized Y, U, V planes (n, h, w), any numeric dtype
    (BT.601, limited range, clipped like swscale)."""
    out = np.empty((len(y), 3) + y.shape[1:], np.float32)
    yy, uu, vv = (np.subtract(p, c, dtype=np.float32) for p, c in ((y, 16.0), (u, 128.0), (v, 128.0)))
    for c in range(3):
        m = _YUV_TO_RGB[c]
        np.multiply(yy, m[0], out=out[:, c])
        if m[1]:
            out[:, c] += m[1] * uu
        if m[2]:
            out[:, c] += m[2] * vv
    return np.clip(out, 0.0, 255.0, out=out)


def rgb_frames(i420: np.ndarray, height: int = 27) -> np.ndarray:
    """uint8 RGB ``(n, height, w, 3)`` of I420 frames: chroma repeated to full size, rows resampled linearly
    to `height` (TransNetV2's 48x27 from the ``fast`` detector's 48x28 decode)."""
    y, u, v = split_i420(i420)
    up = [np.repeat(np.repeat(p, 2, axis=1), 2, axis=2) for p in (u, v)]
    rgb = i420_to_rgb(y, *up)  # (n, 3, h, w)
    h = rgb.shape[2]
    pos = (np.arange(height) + 0.5) * h / height - 0.5
    i0 = np.clip(np.floor(pos).astype(int), 0, h - 1)
    i1 = np.minimum(i0 + 1, h - 1)
    t = np.clip(pos - i0, 0.0, 1.0).astype(np.float32)[None, None, :, None]
    rows = rgb[:, :, i0] * (1 - t) + rgb[:, :, i1] * t
    return np.rint(rows).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def iter_frames(path: str, width: int = 48, height: int = 27, chunk: int = 512, skip_loop_filter: bool = True,
                scaler: str = "exact", deadline: Deadline | None = None, pix_fmt: str = "rgb24",
                queue_chunks: int = 16) -> Iterator[np.ndarray]:
    """Yield chunks of decoded frames (uint8, ``(k,) + frame_shape(width, height, pix_fmt)``, ``k <= chunk``).

    Raises VideoError when ffmpeg fails before the first frame, and the deadline's MediaTimeout when it passes
    (ffmpeg is killed, nothing is left running).
    """
    shape = frame_shape(width, height, pix_fmt)
    proc = subprocess.Popen(_command(path, width, height, skip_loop_filter, scaler, pix_fmt),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
    chunks: queue.Queue = queue.Queue(maxsize=queue_chunks)
    stop = threading.Event()
    reader = threading.Thread(target=_read_chunks, args=(proc.stdout, int(np.prod(shape)), chunk, chunks, stop),
                              daemon=True)
    reader.start()
    total = 0
    try:
        while (data := chunks.get()) is not None:
            k = len(data) // int(np.prod(shape))
            total += k
            yield np.frombuffer(data, np.uint8).reshape((k,) + shape)
        proc.wait()
        drain.join(timeout=5)
    finally:
        stop.set()
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                chunks.get_nowait()
            except queue.Empty:
                reader.join(timeout=0.05)
        proc.stdout.close()
    if expired.is_set():
        raise deadline.error()
    if total == 0:
        err = b"".join(stderr).decode("utf-8", "replace").strip()[-400:]
        raise VideoError(path, "no decodable video frames" + (f" (ffmpeg: {err})" if err else ""))


def _read_chunks(pipe, frame_bytes: int, chunk: int, out: queue.Queue, stop: threading.Event) -> None:
    """Read whole frames from `pipe` in chunks of up to `chunk` frames into `out`; None marks the end."""
    size = chunk * frame_bytes
    try:
        while not stop.is_set():
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            while got < size:
                n = pipe.readinto(view[got:])
                if not n:
                    break
                got += n
            k = got // frame_bytes
            if k:
                out.put(bytes(view[:k * frame_bytes]) if k < chunk else buf)
            if got < size:
                break
    except (OSError, ValueError):  # the pipe was closed under us: the consumer has stopped
        pass
    finally:
        out.put(None)
