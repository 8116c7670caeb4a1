"""Fixtures for the training-area tests: a tiny curated lake (stand-in caption + clip-frame files in the
curation schemas), the smoke processor, and helpers to run the trainer in subprocesses."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

CAPTIONS = [
    "A red ball rolls across a green field. It stops near a tree.",
    "A blue car drives along the street at night. The lights are bright.",
    "A cat jumps onto the table. Then it runs out of the room.",
]


def jpeg(color: tuple[int, int, int], size: int = 32) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


def write_curated_video(storage: str, key: str, n_clips: int = 3, frames_per_clip: int = 4, captions=None) -> None:
    """Captions + clip frames of one video in the layout/schemas the curation layer writes."""
    from longvila import io as lio
    from longvila import layout

    caps = captions or CAPTIONS
    lio.write_parquet(pa.table({
        "clip_index": pa.array(list(range(n_clips)), pa.int32()),
        "caption": [caps[i % len(caps)] for i in range(n_clips)],
        "source": ["annotation"] * n_clips,  # stand-ins for human captions (the smoke recipe trains on those)
    }), layout.layer_path(storage, "captions", key))
    rows = {"clip_index": [], "frame_index_in_clip": [], "frame_number": [], "pts_s": [], "width": [], "height": [],
            "jpeg": []}
    for c in range(n_clips):
        for f in range(frames_per_clip):
            rows["clip_index"].append(c)
            rows["frame_index_in_clip"].append(f)
            rows["frame_number"].append(c * 100 + f)
            rows["pts_s"].append((c * 100 + f) / 25.0)
            rows["width"].append(32)
            rows["height"].append(32)
            rows["jpeg"].append(jpeg(((40 * c) % 256, (60 * f) % 256, 128)))
    lio.write_parquet(pa.table({
        "clip_index": pa.array(rows["clip_index"], pa.int32()),
        "frame_index_in_clip": pa.array(rows["frame_index_in_clip"], pa.int32()),
        "frame_number": pa.array(rows["frame_number"], pa.int64()),
        "pts_s": pa.array(rows["pts_s"], pa.float64()),
        "width": pa.array(rows["width"], pa.int32()),
        "height": pa.array(rows["height"], pa.int32()),
        "jpeg": pa.array(rows["jpeg"], pa.binary()),
    }), layout.layer_path(storage, "clip_frames", key))


def write_annotated_video(storage: str, key: str) -> None:
    """A video whose clips 0 and 2 show the digits 4 and 9 (annotated on-screen text), clip 1 a pattern,
    with its clip frames, clip captions (schema of curation.captioning.captioner) and video frames."""
    from longvila import io as lio
    from longvila import layout

    write_curated_video(storage, key, n_clips=3, frames_per_clip=4)
    lio.write_parquet(pa.table({
        "clip_index": pa.array([0, 1, 2], pa.int32()),
        "start_s": [0.0, 2.0, 4.0], "end_s": [2.0, 4.0, 6.0],
        "caption": ["The number 4 on red.", "A test pattern.", "The number 9 on blue."],
        "ok": [True, True, True], "source": ["annotation"] * 3,
        "on_screen_text": ["4", None, "9"],
    }), layout.layer_path(storage, "captions", key))
    lio.write_parquet(pa.table({
        "frame_number": pa.array(range(6), pa.int64()), "pts_s": [0.5, 1.5, 2.75, 3.25, 4.5, 5.5],
        "width": pa.array([32] * 6, pa.int32()), "height": pa.array([32] * 6, pa.int32()),
        "jpeg": pa.array([jpeg((30 * i, 0, 0)) for i in range(6)], pa.binary()),
    }), layout.layer_path(storage, "video_frames", key))


@pytest.fixture(scope="session")
def lake(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("lake")
    for key in ("video_a-00000001", "video_b-00000002"):
        write_curated_video(str(root), key)
    return str(root)


@pytest.fixture(scope="session")
def processor():
    from training.model.processing import build_processor
    from training.model.profiles import get_profile

    cfg = get_profile("smoke").config()
    return build_processor(cfg.tokens_per_frame, cfg.vision_config.image_size, 512)


@pytest.fixture(scope="session")
def stage_datasets(lake, tmp_path_factory) -> dict:
    """Datasets of stages 1, 3 and 4 of the smoke recipe, built from the fixture lake."""
    from training.data.build import build_stage_dataset
    from training.recipes import load_recipe

    r = load_recipe("smoke")
    out = {}
    root = tmp_path_factory.mktemp("datasets")
    for n in (1, 3, 4):
        st = r.stage(n)
        d = str(root / f"stage{n}")
        build_stage_dataset(d, st, storage=lake, video_keys=["video_a-00000001", "video_b-00000002"])
        out[n] = d
    return out


def _run_train(args: list[str], nproc: int = 1, env: dict | None = None, timeout: float = 180,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run the trainer as a subprocess (torchrun when nproc > 1)."""
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    if nproc > 1:
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "training.train", *args]
    else:
        cmd = [PY, "-m", "training.train", *args]
    p = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"trainer failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="session")
def run_train():
    """The trainer as a subprocess: run_train(args, nproc=1, env=None, timeout=300, check=True)."""
    return _run_train
