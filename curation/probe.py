"""Probe a video file with PyAV: container, codec, duration, frame rate (VFR aware), frame count,
resolution, rotation, audio, size and sha256.

The probe demuxes the whole video stream (cheap: no decoding) to count frames exactly and to detect a
variable frame rate from presentation-timestamp deltas, and decodes the first frame to prove that the
stream is decodable and to read the display rotation.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

import numpy as np

from longvila.errors import VideoError
from longvila.io import sha256_file

from .video import Deadline, _short, decode_stream, frame_index, header_duration_s, open_video

CODE_VERSION = "probe-v1"

# relative spread of pts deltas above which the stream is called variable-frame-rate
VFR_TOLERANCE = 0.02


@dataclass
class ProbeResult:
    """What the probe learned about one video. All fields are JSON-serialisable.

    | field | meaning |
    |---|---|
    | path | the probed local path |
    | container | demuxer name (e.g. ``mov,mp4,m4a,3gp,3g2,mj2``) |
    | codec | video codec name (e.g. ``h264``) |
    | duration_s | video duration: last frame time + one frame duration (falls back to the header) |
    | fps | average frame rate = frames / duration (the nominal rate for constant-rate video) |
    | fps_is_variable | True when presentation-timestamp deltas vary by more than 2 % |
    | frame_count | number of video frames (counted from the demuxed packets, not trusted from the header) |
    | width, height | coded frame size in pixels (before rotation) |
    | rotation | display rotation in degrees (display matrix side data; 0, 90, 180 or 270 usually) |
    | has_audio | the container has at least one audio stream |
    | size_bytes | file size |
    | sha256 | hex sha256 of the file bytes (the raw video's data version) |
    """

    path: str
    container: str
    codec: str
    duration_s: float
    fps: float
    fps_is_variable: bool
    frame_count: int
    width: int
    height: int
    rotation: int
    has_audio: bool
    size_bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def probe_video(path: str, sha256: str | None = None) -> ProbeResult:
    """Probe a local video file. Raises VideoError(path, reason) for anything unusable (MediaTimeout when
    demuxing and decoding the first frame run past the budget for the header's duration).

    `sha256` may be passed when the caller already hashed the file (it is not re-checked).
    """
    import av

    path = os.fspath(path)
    container, stream = open_video(path)
    try:
        codec = stream.codec_context.name if stream.codec_context else None
        if not codec:
            raise VideoError(path, "video stream has no known codec")
        width = int(stream.codec_context.width or 0)
        height = int(stream.codec_context.height or 0)
        container_name = container.format.name
        has_audio = len(container.streams.audio) > 0
        nominal = stream.average_rate or stream.guessed_rate or stream.base_rate
        nominal_fps = float(nominal) if nominal else 0.0
        header_duration = header_duration_s(container, stream)
        deadline = Deadline.for_video(path, header_duration, "probing")
        idx = frame_index(path, container, deadline=deadline)
        # decode the first frame: proves decodability, gives rotation and the real size
        container.seek(0)
        rotation = 0
        first = None
        try:
            for fr in decode_stream(container, stream, deadline):
                first = fr
                break
        except av.error.FFmpegError as e:
            raise VideoError(path, f"no decodable video frames ({_short(e)})") from None
        if first is None:
            raise VideoError(path, "no decodable video frames")
        try:
            rotation = int(round(first.rotation or 0)) % 360
        except Exception:  # noqa: BLE001 - older PyAV without frame.rotation
            rotation = 0
        width = width or first.width
        height = height or first.height
    finally:
        container.close()
    if width <= 0 or height <= 0:
        raise VideoError(path, f"invalid frame size {width}x{height}")

    n = idx.count
    times = idx.times()
    deltas = np.diff(times) if n > 1 else np.array([])
    deltas = deltas[deltas > 0]
    if len(deltas):
        med = float(np.median(deltas))
        spread = (float(deltas.max()) - float(deltas.min())) / med if med > 0 else 0.0
        fps_is_variable = bool(spread > VFR_TOLERANCE)
        frame_dur = med
    else:
        fps_is_variable = False
        frame_dur = 1.0 / nominal_fps if nominal_fps > 0 else 0.0
    if n > 1 and times[-1] > 0:
        duration = float(times[-1]) + frame_dur
    else:
        duration = header_duration or (frame_dur * n)
    if fps_is_variable or nominal_fps <= 0:
        fps = n / duration if duration > 0 else 0.0
    else:
        fps = nominal_fps
    if fps <= 0:
        raise VideoError(path, "cannot determine a frame rate")
    size = os.path.getsize(path)
    return ProbeResult(
        path=path,
        container=container_name,
        codec=codec,
        duration_s=round(float(duration), 6),
        fps=round(float(fps), 6),
        fps_is_variable=fps_is_variable,
        frame_count=int(n),
        width=int(width),
        height=int(height),
        rotation=rotation,
        has_audio=has_audio,
        size_bytes=int(size),
        sha256=sha256 or sha256_file(path),
    )
