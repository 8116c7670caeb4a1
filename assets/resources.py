"""The ``lake`` resource shared by every asset module.

`LakeResource` (resource key ``lake``) says where raw videos are read from and where every derived
artefact is written, plus the S3 endpoint and credentials. Every field is optional: an unset field
falls back to `longvila.settings` (environment variables, then local defaults), so the same
Definitions work on a laptop (local folders) and against S3/MinIO (``s3://`` URLs).

| field | env var (fallback) | default | meaning |
|---|---|---|---|
| `source` | `LONGVILA_SOURCE` | `<root>/data/raw` | fsspec URL of the raw videos (folder or `s3://...`), recursive |
| `storage` | `LONGVILA_STORAGE` | `<root>/data/lake` | fsspec URL of every derived artefact (`longvila.layout`) |
| `s3_endpoint_url` | `LONGVILA_S3_ENDPOINT_URL`, `AWS_ENDPOINT_URL` | AWS | S3-compatible endpoint (MinIO, moto) |
| `aws_access_key_id` | `AWS_ACCESS_KEY_ID` | boto chain | S3 key id |
| `aws_secret_access_key` | `AWS_SECRET_ACCESS_KEY` | boto chain | S3 secret |
| `aws_region` | `AWS_REGION`, `AWS_DEFAULT_REGION` | boto chain | S3 region |

`<root>` is `LONGVILA_ROOT` or the current directory. `LakeResource.from_env()` binds each variable
that is set with `dagster.EnvVar`, so the Dagster UI shows where a value came from and never stores
secrets in run config.

The video manifest behind the partition keys is kept by `longvila.sources`; the resource only binds
it to its settings (`manifest`, `video_entry`, `present_keys`).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from longvila import layout, sources
from longvila.settings import S3Options, Settings, default_source, default_storage


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
        description="S3-compatible endpoint URL (MinIO, moto, Ceph). "
        "Unset: LONGVILA_S3_ENDPOINT_URL / AWS_ENDPOINT_URL.",
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

    # ---- the video manifest (longvila.sources) ----------------------------------------------------
    def read_manifest(self) -> dict:
        return sources.read_manifest(self.settings())

    def video_entry(self, key: str) -> dict:
        """Manifest entry of a present video (relpath, url, size, fingerprint, ...); InputError otherwise. The
        manifest is parsed once per process while unchanged (`sources.shared_manifest`), not once per step."""
        return dict(sources.video_entry(sources.shared_manifest(self.settings()), key))

    def present_keys(self) -> list[str]:
        """Partition keys of the videos currently present in the source (removed ones excluded)."""
        return sources.present_keys(sources.shared_manifest(self.settings()))


__all__ = ["LakeResource"]
