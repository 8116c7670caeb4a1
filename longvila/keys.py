"""Stable, filesystem-safe partition keys for videos.

A key is derived from the video's path relative to the source root (never from its content, so a
changed video keeps its partition and gets a new data version instead). Keys are lowercase ASCII,
safe as file names, Dagster partition keys and shell words, and unique: a short hash of the exact
relative path is appended, so `a b.mp4` and `a_b.mp4` never collide.

Only keys of that form ever become lake paths: `check_key` refuses anything else (for example a
partition such as ``../..`` added by hand in the Dagster UI) before `longvila.layout` builds a path.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from .errors import InputError

_MAX_STEM = 48


def partition_key_for(relative_path: str) -> str:
    rel = relative_path.replace("\\", "/").lstrip("/")
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:8]
    ascii_ = unicodedata.normalize("NFKD", rel).encode("ascii", "ignore").decode("ascii").lower()
    stem = re.sub(r"[^a-z0-9]+", "_", ascii_).strip("_")[:_MAX_STEM].strip("_") or "video"
    return f"{stem}-{digest}"


_KEY_RE = re.compile(r"^[a-z0-9_]{1,48}-[0-9a-f]{8}$")


def is_valid_key(key: str) -> bool:
    return isinstance(key, str) and bool(_KEY_RE.fullmatch(key))


def check_key(key: str) -> str:
    """`key` itself if it has the form `partition_key_for` makes; InputError naming it otherwise."""
    if not is_valid_key(key):
        raise InputError(repr(key), "not a video partition key (expected <lowercase stem>-<8 hex digits>, as "
                                    "made by longvila.keys.partition_key_for); refusing to build a lake path from it")
    return key
