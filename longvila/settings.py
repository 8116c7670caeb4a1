"""Project settings, read from the environment with sensible local defaults.

| variable | default | meaning |
|---|---|---|
| LONGVILA_ROOT | current directory | base for the relative defaults below |
| LONGVILA_SOURCE | `<root>/data/raw` | fsspec URL of the raw videos (local folder or `s3://bucket/prefix`) |
| LONGVILA_STORAGE | `<root>/data/lake` | fsspec URL where every derived artefact is written |
| LONGVILA_S3_ENDPOINT_URL | `AWS_ENDPOINT_URL` | S3-compatible endpoint (MinIO, moto, Ceph, ...) |
| AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION | unset | credentials, as boto/s3fs read them |
| DAGSTER_HOME | `<root>/.dagster` | Dagster instance (SQLite storage for the embedded default) |
| LONGVILA_CACHE_DIR | `<root>/data/cache` | local cache of remote (s3://) videos, shared by the steps of a lineage |
| LONGVILA_CACHE_MAX_GB | 50 | size bound of that cache (least recently used files are evicted; 0 disables it) |
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
