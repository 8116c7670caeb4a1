"""Curation parameters, read once from the environment and validated (no Dagster).

They decide the curation assets' code versions (`code_versions`, used by `assets.curation` and
`curation.scaleout`), so they are fixed when
the Definitions load, not per run: changing one marks exactly the affected layers stale.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any


def _env(name: str, default: Any, cast=str) -> Any:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    if cast is bool:
        return v.strip().lower() in {"1", "true", "yes", "on"}
    return cast(v)


@dataclass(frozen=True)
class CurationConfig:
    """Curation parameters; they enter the code versions of the assets that use them.

    | field | env var | default | used by | meaning |
    |---|---|---|---|---|
    | `detector` | `LONGVILA_SHOT_DETECTOR` | `fast` | video_shots | shot detector (one of `curation.shots.DETECTORS`) |
    | `detector_options` | `LONGVILA_SHOT_DETECTOR_OPTIONS` (JSON) | `{}` | video_shots | detector keyword options |
    | `max_clip_s` | `LONGVILA_MAX_CLIP_S` | 10.0 | video_clips | longest clip, seconds (longer shots are cut) |
    | `min_clip_s` | `LONGVILA_MIN_CLIP_S` | 1.0 | video_clips | shortest clip, seconds (shorter: dropped or merged) |
    | `frames_per_clip` | `LONGVILA_FRAMES_PER_CLIP` | 8 | clip_frames | frames sampled uniformly from each clip |
    | `frame_size` | `LONGVILA_FRAME_SIZE` | 384 | clip_frames, video_frames | frames resized to fit this square (px) |
    | `jpeg_quality` | `LONGVILA_JPEG_QUALITY` | 90 | clip_frames, video_frames | JPEG quality of stored frames |
    | `video_fps` | `LONGVILA_VIDEO_FPS` | 1.0 | video_frames | whole-video sampling rate (frames per second) |
    | `max_video_frames` | `LONGVILA_MAX_VIDEO_FRAMES` | 256 | video_frames | cap on whole-video frames (then uniform) |
    | `write_clip_files` | `LONGVILA_WRITE_CLIP_FILES` | false | clip_files | also cut every clip into its own MP4 |
    """

    detector: str = "fast"
    detector_options: dict = field(default_factory=dict)
    max_clip_s: float = 10.0
    min_clip_s: float = 1.0
    frames_per_clip: int = 8
    frame_size: int = 384
    jpeg_quality: int = 90
    video_fps: float = 1.0
    max_video_frames: int = 256
    write_clip_files: bool = False

    def __post_init__(self):
        if self.min_clip_s <= 0 or self.max_clip_s < self.min_clip_s:
            raise ValueError(f"need 0 < min_clip_s <= max_clip_s, got {self.min_clip_s}, {self.max_clip_s}")
        if self.frames_per_clip < 1 or self.max_video_frames < 1 or self.video_fps <= 0 or self.frame_size < 16:
            raise ValueError("frames_per_clip, max_video_frames >= 1, video_fps > 0, frame_size >= 16 required")

    @classmethod
    def from_env(cls) -> "CurationConfig":
        d = cls()
        opts = _env("LONGVILA_SHOT_DETECTOR_OPTIONS", None)
        return cls(
            detector=_env("LONGVILA_SHOT_DETECTOR", d.detector),
            detector_options=json.loads(opts) if opts else {},
            max_clip_s=_env("LONGVILA_MAX_CLIP_S", d.max_clip_s, float),
            min_clip_s=_env("LONGVILA_MIN_CLIP_S", d.min_clip_s, float),
            frames_per_clip=_env("LONGVILA_FRAMES_PER_CLIP", d.frames_per_clip, int),
            frame_size=_env("LONGVILA_FRAME_SIZE", d.frame_size, int),
            jpeg_quality=_env("LONGVILA_JPEG_QUALITY", d.jpeg_quality, int),
            video_fps=_env("LONGVILA_VIDEO_FPS", d.video_fps, float),
            max_video_frames=_env("LONGVILA_MAX_VIDEO_FRAMES", d.max_video_frames, int),
            write_clip_files=_env("LONGVILA_WRITE_CLIP_FILES", d.write_clip_files, bool),
        )

    def replace(self, **changes) -> "CurationConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


RAW_VIDEO_CODE_VERSION = "raw-sha256-v1"


def code_versions(cfg: CurationConfig) -> dict[str, str]:
    """Code version of every curation asset for a configuration (library version + parameters)."""
    from curation import clips as _clips
    from curation import frames as _frames
    from curation import probe as _probe
    from curation import shots as _shots

    fr = dict(size=cfg.frame_size, jpeg_quality=cfg.jpeg_quality)
    out = {
        "raw_video": RAW_VIDEO_CODE_VERSION,
        "video_probe": _probe.CODE_VERSION,
        "video_shots": _shots.code_version(cfg.detector, **cfg.detector_options),
        "video_clips": _clips.code_version(max_clip_s=cfg.max_clip_s, min_clip_s=cfg.min_clip_s),
        "clip_frames": _frames.code_version(kind="clip", frames_per_clip=cfg.frames_per_clip, **fr),
        "video_frames": _frames.code_version(kind="video", fps=cfg.video_fps, max_frames=cfg.max_video_frames,
                                             **fr),
    }
    if cfg.write_clip_files:
        from curation import clipfiles as _clipfiles

        out["clip_files"] = getattr(_clipfiles, "CODE_VERSION", "clipfiles-v1")
    return out
