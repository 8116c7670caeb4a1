"""Stable, filesystem-safe partition keys for videos.

A key is derived from the video's path relative to the source root (never from its content, so a
changed video keeps its partition and gets a new data version instead). Keys are lowercase ASCII,
safe as file names, Dagster partition keys and shell words, and unique: a short hash of the exact
relative path is appended, so `a b.mp4` and `a_b.mp4` never collide.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_MAX_STEM = 48


def partition_key_for(relative_path: str) -> str:
    rel = relative_path.replace("\\", "/").lstrip("/")
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:8]
    ascii_ = unicodedata.normalize("NFKD", rel).encode("ascii", "ignore").decode("ascii").lower()
    stem = re.sub(r"[^a-z0-9]+", "_", ascii_).strip("_")[:_MAX_STEM].strip("_") or "video"
    return f"{stem}-{digest}"


_KEY_RE = re.compile(r"^[a-z0-9_]{1,48}-[0-9a-f]{8}$")


def is_valid_key(key: str) -> bool:
    return bool(_KEY_RE.match(key))
