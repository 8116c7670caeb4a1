"""Project settings, read from the environment with sensible local defaults.

| variable | default | meaning |
|---|---|---|
| LONGVILA_ROOT | current directory | base for the relative defaults below |
| LONGVILA_SOURCE | `<root>/data/raw` | fsspec URL of the raw videos (local folder or `s3://bucket/prefix`) |
| LONGVILA_STORAGE | `<root>/data/lake` | fsspec URL where every derived artefact is written |
| LONGVILA_S3_ENDPOINT_URL | `AWS_ENDPOINT_URL` | S3-compatible endpoint (MinIO, moto, Ceph, ...) |
| AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION | unset | credentials, as boto/s3fs read them |
| DAGSTER_HOME | `<root>/.dagster` | Dagster instance (SQLite storage for the embedded default) |
| LONGVILA_CACHE_DIR | `<root>/data/cache` | local copies of the raw videos keyed by sha256 (`longvila.cache`) |
| LONGVILA_CACHE_MAX_GB | 50 | its size bound (LRU copies not in use are evicted; 0 = verified temporary copies) |
| LONGVILA_MEDIA_TIMEOUT_S | 120 | fixed part of the time budget of a decode loop or ffmpeg process |
| LONGVILA_MEDIA_TIMEOUT_PER_VIDEO_S | 1.0 | plus this many seconds per second of video |
| LONGVILA_STALE_TEMP_S | 3600 | age after which a killed writer's temporary files are swept |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def project_root() -> Path:
    return Path(os.environ.get("LONGVILA_ROOT", os.getcwd())).resolve()


def default_source() -> str:
    return os.environ.get("LONGVILA_SOURCE", str(project_root() / "data" / "raw"))


def default_storage() -> str:
    return os.environ.get("LONGVILA_STORAGE", str(project_root() / "data" / "lake"))


def default_cache_dir() -> str:
    return os.environ.get("LONGVILA_CACHE_DIR", str(project_root() / "data" / "cache"))


def default_cache_max_bytes() -> int:
    return int(float(os.environ.get("LONGVILA_CACHE_MAX_GB", "50")) * (1 << 30))


def _env_float(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw not in (None, "") else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:
        raise ValueError(f"{name}={raw!r} must be >= {minimum:g}")
    return value


@dataclass(frozen=True)
class Timeouts:
    """Time budgets of media work and the age of abandoned temporary files (resolved once per call site
    from the environment, validated here)."""

    media_s: float = 120.0
    media_per_video_s: float = 1.0
    stale_temp_s: float = 3600.0

    @classmethod
    def from_env(cls) -> "Timeouts":
        return cls(
            media_s=_env_float("LONGVILA_MEDIA_TIMEOUT_S", cls.media_s, 0.001),
            media_per_video_s=_env_float("LONGVILA_MEDIA_TIMEOUT_PER_VIDEO_S", cls.media_per_video_s, 0.0),
            stale_temp_s=_env_float("LONGVILA_STALE_TEMP_S", cls.stale_temp_s, 1.0),  # > a writer's create-to-lock gap
        )

    def media_budget_s(self, duration_s: float | None) -> float:
        """Seconds allowed for one pass of media work over `duration_s` seconds of video."""
        return self.media_s + self.media_per_video_s * max(0.0, float(duration_s or 0.0))


def default_dagster_home() -> str:
    return os.environ.get("DAGSTER_HOME", str(project_root() / ".dagster"))


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None
    anon: bool = False

    @classmethod
    def from_env(cls) -> "S3Options":
        return cls(
            endpoint_url=os.environ.get("LONGVILA_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL"),
            key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        )

    def storage_options(self) -> dict:
        opts: dict = {}
        if self.anon:
            opts["anon"] = True
        if self.key:
            opts["key"] = self.key
        if self.secret:
            opts["secret"] = self.secret
        client_kwargs: dict = {}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        if self.region:
            client_kwargs["region_name"] = self.region
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts


@dataclass(frozen=True)
class Settings:
    source: str = field(default_factory=default_source)
    storage: str = field(default_factory=default_storage)
    s3: S3Options = field(default_factory=S3Options.from_env)

    def storage_options_for(self, url: str) -> dict:
        return self.s3.storage_options() if str(url).startswith(("s3://", "s3a://")) else {}
