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
"""

from __future__ import annotations

from .io import join

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


def layer_path(storage: str, layer: str, key: str) -> str:
    return join(storage, layer, f"{key}.{LAYER_EXT[layer]}")


def clip_files_dir(storage: str, key: str) -> str:
    """Root of one video's versioned clip-file sets (curation.clipfiles.write_clip_set)."""
    return join(storage, "clip_files", key)


def dataset_dir(storage: str, name: str) -> str:
    return join(storage, "datasets", name)


def checkpoint_dir(storage: str, stage: str) -> str:
    return join(storage, "checkpoints", stage)


def eval_dir(storage: str, benchmark: str, stage: str) -> str:
    return join(storage, "eval", benchmark, stage)
