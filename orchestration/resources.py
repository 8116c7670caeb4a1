"""Shared Dagster resources and the curation parameters.

`LakeResource` (resource key ``lake``) says where raw videos are read from and where every derived
artefact is written, plus the S3 endpoint and credentials. Every field is optional: an unset field
falls back to `longvila.settings` (environment variables, then local defaults), so the same
Definitions work on a laptop (local folders) and against S3/MinIO (``s3://`` URLs).

| field | env var (fallback) | default | meaning |
|---|---|---|---|
| `source` | `LONGVILA_SOURCE` | `<root>/data/raw` | fsspec URL of the raw videos: a local folder or `s3://bucket/prefix`; scanned recursively |
| `storage` | `LONGVILA_STORAGE` | `<root>/data/lake` | fsspec URL where every derived artefact (layout in `longvila.layout`) and the video manifest are written |
| `s3_endpoint_url` | `LONGVILA_S3_ENDPOINT_URL`, `AWS_ENDPOINT_URL` | AWS | S3-compatible endpoint (MinIO, Ceph, moto) |
| `aws_access_key_id` | `AWS_ACCESS_KEY_ID` | boto chain | S3 key id |
| `aws_secret_access_key` | `AWS_SECRET_ACCESS_KEY` | boto chain | S3 secret |
| `aws_region` | `AWS_REGION`, `AWS_DEFAULT_REGION` | boto chain | S3 region |

`<root>` is `LONGVILA_ROOT` or the current directory. `LakeResource.from_env()` binds each variable
that is set with `dagster.EnvVar`, so the Dagster UI shows where a value came from and never stores
secrets in run config.

`CurationConfig` holds the curation parameters. They decide the assets' code versions, so they are
fixed when the Definitions are loaded (from `LONGVILA_*` environment variables, see
`CurationConfig.from_env`) rather than per run: changing one marks exactly the affected layers stale.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from longvila import io as lio
from longvila import layout
from longvila.errors import InputError
from longvila.settings import S3Options, Settings, default_source, default_storage

MANIFEST_RELPATH = "manifest/videos.json"


class LakeResource(ConfigurableResource):
    """Where raw videos come from and where derived artefacts go (local paths or s3:// URLs)."""

    source: Optional[str] = Field(
        default=None,
        description="fsspec URL of the raw videos (local folder or s3://bucket/prefix). "
        "Unset: LONGVILA_SOURCE, else <root>/data/raw.",
    )
    storage: Optional[str] = Field(
        default=None,
        description="fsspec URL of the lake where derived artefacts and manifest/videos.json are written. "
        "Unset: LONGVILA_STORAGE, else <root>/data/lake.",
    )
    s3_endpoint_url: Optional[str] = Field(
        default=None,
        description="S3-compatible endpoint URL (MinIO, moto, Ceph). Unset: LONGVILA_S3_ENDPOINT_URL / AWS_ENDPOINT_URL.",
    )
    aws_access_key_id: Optional[str] = Field(default=None, description="S3 access key id. Unset: AWS_ACCESS_KEY_ID.")
    aws_secret_access_key: Optional[str] = Field(
        default=None, description="S3 secret access key. Unset: AWS_SECRET_ACCESS_KEY."
    )
    aws_region: Optional[str] = Field(default=None, description="S3 region. Unset: AWS_REGION / AWS_DEFAULT_REGION.")

    @classmethod
    def from_env(cls) -> "LakeResource":
        """A resource bound to the LONGVILA_*/AWS_* variables that are set (via dagster.EnvVar)."""
        mapping = {
            "source": ["LONGVILA_SOURCE"],
            "storage": ["LONGVILA_STORAGE"],
            "s3_endpoint_url": ["LONGVILA_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"],
            "aws_access_key_id": ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": ["AWS_SECRET_ACCESS_KEY"],
            "aws_region": ["AWS_REGION", "AWS_DEFAULT_REGION"],
        }
        kwargs: dict[str, Any] = {}
        for fld, names in mapping.items():
            for name in names:
                if os.environ.get(name):
                    kwargs[fld] = EnvVar(name)
                    break
        return cls(**kwargs)

    # ---- resolved values -------------------------------------------------------------------
    # Inside a run/sensor Dagster resolves EnvVar fields; outside (demo, tests) we resolve them here.
    def _get(self, name: str) -> Optional[str]:
        v = getattr(self, name)
        if isinstance(v, EnvVar):
            v = v.get_value()
        return v or None

    def settings(self) -> Settings:
        env = S3Options.from_env()
        s3 = S3Options(
            endpoint_url=self._get("s3_endpoint_url") or env.endpoint_url,
            key=self._get("aws_access_key_id") or env.key,
            secret=self._get("aws_secret_access_key") or env.secret,
            region=self._get("aws_region") or env.region,
        )
        return Settings(source=self.source_root, storage=self.storage_root, s3=s3)

    @property
    def source_root(self) -> str:
        return str(self._get("source") or default_source()).rstrip("/")

    @property
    def storage_root(self) -> str:
        return str(self._get("storage") or default_storage()).rstrip("/")

    # ---- paths ------------------------------------------------------------------------------
    def layer_url(self, layer: str, key: str) -> str:
        """URL of one partition's artefact for a layer of `longvila.layout` (probe, shots, ...)."""
        return layout.layer_path(self.storage_root, layer, key)

    def clip_files_url(self, key: str) -> str:
        return layout.clip_files_dir(self.storage_root, key)

    def manifest_url(self) -> str:
        """`<storage>/manifest/videos.json`: partition key -> source video (written by the sensor)."""
        return lio.join(self.storage_root, MANIFEST_RELPATH)

    # ---- the video manifest -------------------------------------------------------------------
    def read_manifest(self) -> dict:
        """The manifest, or an empty one if no scan has run yet. See `orchestration.sensors`."""
        url = self.manifest_url()
        if not lio.exists(url, self.settings()):
            return {"version": 1, "source": self.source_root, "videos": {}, "rejected": {}}
        return lio.read_json(url, self.settings())

    def video_entry(self, key: str) -> dict:
        """Manifest entry of a partition (relpath, url, size, sha256, status, ...)."""
        entry = self.read_manifest().get("videos", {}).get(key)
        if entry is None:
            raise InputError(key, f"no video with partition key {key!r} in {self.manifest_url()}")
        if entry.get("status") == "deleted":
            raise InputError(entry.get("url", key), f"video was deleted from the source (partition {key})")
        return entry

    def video_url(self, key: str) -> str:
        """Source URL (local path or s3://...) of the video behind a partition key."""
        return self.video_entry(key)["url"]

    def present_keys(self) -> list[str]:
        """Partition keys of the videos currently present in the source (deleted ones excluded)."""
        vids = self.read_manifest().get("videos", {})
        return sorted(k for k, v in vids.items() if v.get("status") != "deleted")


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
    | `detector` | `LONGVILA_SHOT_DETECTOR` | `fast` | video_shots | shot detector name (one of `curation.shots.DETECTORS`) |
    | `detector_options` | `LONGVILA_SHOT_DETECTOR_OPTIONS` (JSON object) | `{}` | video_shots | extra keyword options of the detector (e.g. a threshold) |
    | `max_clip_s` | `LONGVILA_MAX_CLIP_S` | 10.0 | video_clips | longest clip, seconds (longer shots are cut) |
    | `min_clip_s` | `LONGVILA_MIN_CLIP_S` | 1.0 | video_clips | shortest clip, seconds (shorter pieces are dropped or merged) |
    | `frames_per_clip` | `LONGVILA_FRAMES_PER_CLIP` | 8 | clip_frames | frames sampled uniformly from each clip |
    | `frame_size` | `LONGVILA_FRAME_SIZE` | 384 | clip_frames, video_frames | frames are resized to fit this square (pixels) |
    | `jpeg_quality` | `LONGVILA_JPEG_QUALITY` | 90 | clip_frames, video_frames | JPEG quality of stored frames |
    | `video_fps` | `LONGVILA_VIDEO_FPS` | 1.0 | video_frames | whole-video sampling rate (frames per second) |
    | `max_video_frames` | `LONGVILA_MAX_VIDEO_FRAMES` | 256 | video_frames | cap on whole-video frames (uniform over the video beyond it) |
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


__all__ = ["LakeResource", "CurationConfig", "MANIFEST_RELPATH"]
