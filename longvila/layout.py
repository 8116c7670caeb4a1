"""Where each artefact lives under the storage root (LONGVILA_STORAGE, an fsspec URL).

One file per video partition per layer, so a partition's outputs are independent of every other:

| layer | path | format |
|---|---|---|
| probe | `probe/<key>.json` | JSON (curation.probe.ProbeResult) |
| shots | `shots/<key>.parquet` | Parquet, schema curation.schemas.SHOTS |
| clips | `clips/<key>.parquet` | Parquet, schema curation.schemas.CLIPS |
| clip_frames | `clip_frames/<key>.parquet` | Parquet, JPEG bytes, schema curation.schemas.CLIP_FRAMES |
| video_frames | `video_frames/<key>.parquet` | Parquet, JPEG bytes, schema curation.schemas.VIDEO_FRAMES |
| clip_files | `clip_files/<key>/index.json` -> `<key>/<version>/<clip_index:05d>.mp4` | optional per-clip MP4s |
| clip_captions | `captions/<key>.parquet` | Parquet |
| video_summary | `summaries/<key>.json` | JSON |
| video_instructions | `instructions/<key>.jsonl` | LLaVA conversation records |
| datasets | `datasets/<name>/...` | per-stage datasets and manifests |
| checkpoints | `checkpoints/<stage>/` | safetensors checkpoints (local path) |
| eval | `eval/<benchmark>/<stage>/` | scores, heatmaps |

Every path is built here, from validated parts: a video key must pass `longvila.keys.check_key`, and the
names of datasets, stages, benchmarks and layers must be plain path segments (`check_name`), so no
key or name can walk out of the storage root.
"""

from __future__ import annotations

import re

from .errors import InputError
from .io import join
from .keys import check_key

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

LAYER_EXT = {
    "probe": "json",
    "shots": "parquet",
    "clips": "parquet",
    "clip_frames": "parquet",
    "video_frames": "parquet",
    "captions": "parquet",
    "summaries": "json",
    "instructions": "jsonl",
}


def check_name(name: str) -> str:
    """`name` if it is one plain path segment (no separator, no leading dot, no '..'); InputError otherwise."""
    if not (isinstance(name, str) and _NAME_RE.fullmatch(name) and ".." not in name):
        raise InputError(repr(name), "not a plain path segment; refusing to build a lake path from it")
    return name


def layer_path(storage: str, layer: str, key: str) -> str:
    if layer not in LAYER_EXT:
        raise InputError(repr(layer), f"unknown layer (known: {', '.join(sorted(LAYER_EXT))})")
    return join(storage, layer, f"{check_key(key)}.{LAYER_EXT[layer]}")


def clip_files_dir(storage: str, key: str) -> str:
    """Root of one video's versioned clip-file sets (curation.clipfiles.write_clip_set)."""
    return join(storage, "clip_files", check_key(key))


def clip_files_index_path(storage: str, key: str) -> str:
    """The commit marker of a video's clip files: names the current version and its files."""
    return join(clip_files_dir(storage, key), "index.json")


def dataset_dir(storage: str, name: str) -> str:
    return join(storage, "datasets", check_name(name))


def checkpoint_dir(storage: str, stage: str) -> str:
    return join(storage, "checkpoints", check_name(stage))


def eval_dir(storage: str, benchmark: str, stage: str) -> str:
    return join(storage, "eval", check_name(benchmark), check_name(stage))
