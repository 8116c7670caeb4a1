"""Training checkpoints: safetensors weights + optimizer, scheduler, RNG and data-position state,
with a sha256 manifest of every file, written as an atomic directory (longvila.io.atomic_dir).

Layout of one checkpoint (`<output_dir>/checkpoints/step-000012/`):

| file | content |
|---|---|
| model.safetensors | every parameter and buffer of the (possibly LoRA-wrapped) model |
| optimizer.pt | optimizer state_dict |
| scheduler.pt | LR scheduler state_dict |
| rng.pt | per-rank RNG states (python, numpy, torch CPU, CUDA) |
| trainer_state.json | step, data position, phase, recipe/stage, losses so far |
| manifest.json | {"files": {name: sha256}, "step": N} — written last |

`load_checkpoint_state` recomputes every hash and raises `CheckpointError` (an InputError naming the
file) on any mismatch, so a corrupted or truncated checkpoint is never loaded.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longvila.errors import InputError
from longvila.io import atomic_dir, sha256_file, write_json

MANIFEST = "manifest.json"
_STEP_RE = re.compile(r"^step-(\d{6,})$")


class CheckpointError(InputError):
    """A checkpoint that is missing files, fails its checksum, or does not match the model."""


def rng_state() -> dict:
    st = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _torch_save_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def step_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    trainer_state: dict,
    rng_states: list[dict] | None = None,
) -> Path:
    """Write a checkpoint directory atomically; returns its path. Call on one rank only."""
    from safetensors.torch import save_model

    final = Path(path)
    with atomic_dir(final) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        if optimizer is not None:
            (tmp / "optimizer.pt").write_bytes(_torch_save_bytes(optimizer.state_dict()))
        if scheduler is not None:
            (tmp / "scheduler.pt").write_bytes(_torch_save_bytes(scheduler.state_dict()))
        (tmp / "rng.pt").write_bytes(_torch_save_bytes(rng_states if rng_states is not None else [rng_state()]))
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, sort_keys=True, default=str))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / MANIFEST, {"files": files, "step": trainer_state.get("step")})
    return final


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """Recompute every file's sha256 against the manifest; returns the manifest or raises CheckpointError."""
    p = Path(path)
    mf = p / MANIFEST
    if not mf.exists():
        raise CheckpointError(str(p), "no manifest.json (incomplete checkpoint)")
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(str(mf), f"unreadable manifest: {e}") from None
    for name, digest in files.items():
        f = p / name
        if not f.exists():
            raise CheckpointError(str(f), "listed in the manifest but missing")
        actual = sha256_file(f)
        if actual != digest:
            raise CheckpointError(str(f), f"checksum mismatch (manifest {digest[:12]}..., file {actual[:12]}...): corrupted")
    return manifest


@dataclass
class LoadedCheckpoint:
    path: Path
    trainer_state: dict
    optimizer: dict | None
    scheduler: dict | None
    rng: list[dict]


def load_checkpoint_state(path: str | os.PathLike, model: torch.nn.Module, strict: bool = True) -> LoadedCheckpoint:
    """Verify checksums, load weights into `model` and return the remaining states."""
    from safetensors.torch import load_model

    p = Path(path)
    verify_checkpoint(p)
    try:
        missing, unexpected = load_model(model, str(p / "model.safetensors"), strict=False)
    except Exception as e:  # shape mismatch etc.
        raise CheckpointError(str(p / "model.safetensors"), f"does not fit the model: {e}") from None
    if strict and (missing or unexpected):
        raise CheckpointError(str(p / "model.safetensors"),
                              f"does not fit the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")

    def _ld(name):
        f = p / name
        return torch.load(f, map_location="cpu", weights_only=False) if f.exists() else None

    return LoadedCheckpoint(
        path=p,
        trainer_state=json.loads((p / "trainer_state.json").read_text()),
        optimizer=_ld("optimizer.pt"),
        scheduler=_ld("scheduler.pt"),
        rng=_ld("rng.pt") or [],
    )


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.exists():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir() if d.is_dir() and (m := _STEP_RE.match(d.name))]
    return [d for _, d in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike, log=print) -> Path | None:
    """Newest checkpoint whose checksums verify; corrupted ones are reported and skipped."""
    for d in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(d)
            return d
        except CheckpointError as e:
            log(f"[checkpoint] skipping {d}: {e}")
    return None


def prune_checkpoints(output_dir: str | os.PathLike, keep: int = 2) -> None:
    import shutil

    ckpts = list_checkpoints(output_dir)
    for d in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(d, ignore_errors=True)
