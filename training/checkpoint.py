"""Training checkpoints: full (gathered) model, optimizer, scheduler, RNG and data-position state in
safetensors + JSON (nothing is pickled, so loading a checkpoint never runs code), with a sha256
manifest of every file, written as an atomic directory (longvila.io.atomic_dir), grouped by run identity.

Layout under a stage's output directory::

    runs/<fingerprint>/run.json                       identity of the run (training.config.RunConfig.identity)
    runs/<fingerprint>/checkpoints/step-000012/       one checkpoint

One checkpoint:

| file | content |
|---|---|
| model.safetensors | every parameter and persistent buffer, full (unsharded) tensors, the model's names |
| optimizer.safetensors + .json | optimizer state tensors + the rest (param groups, scalars), by parameter name |
| scheduler.json | LR scheduler state |
| rng.safetensors + rng.json | every rank's RNG states (python, numpy, torch CPU, CUDA) |
| trainer_state.json | step (= data position: the data order is a function of seed and step), losses, fingerprint |
| manifest.json | {"files": {name: sha256}, "step": N}: written last |

Why full-state files rather than torch.distributed.checkpoint shards: they are readable without pickle
(DCP's metadata file is a pickle), load at any world size or SP layout, and the same code serves the
replicated and the FSDP trainer. The cost: rank 0 holds one full copy of weights + optimizer state in
host memory while saving (about 12 bytes per parameter: 91 GB for the 7B LLM).

`load_checkpoint` recomputes every hash and raises `CheckpointError` (an InputError naming the file) on
any mismatch, so a corrupted or truncated checkpoint is never loaded. A checkpoint is only looked for in
the directory of the current run identity, so pruning and resuming never mix runs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longvila.errors import InputError
from longvila.io import atomic_dir, sha256_file, write_json

MANIFEST = "manifest.json"
RUN_INFO = "run.json"
_STEP_RE = re.compile(r"^step-(\d{6,})$")
_TENSOR = "__tensor__"


class CheckpointError(InputError):
    """A checkpoint that is missing files, fails its checksum, or does not match the model."""


# ------------------------------------------------------------------------------------------ layout


def run_dir(output_dir: str | os.PathLike, fingerprint: str) -> Path:
    return Path(output_dir) / "runs" / fingerprint


def step_dir(run: str | os.PathLike, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(run: str | os.PathLike) -> list[Path]:
    root = Path(run) / "checkpoints"
    if not root.exists():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir() if d.is_dir() and (m := _STEP_RE.match(d.name))]
    return [d for _, d in sorted(found)]


def latest_checkpoint(run: str | os.PathLike, log=print) -> Path | None:
    """Newest checkpoint of this run whose checksums verify; corrupted ones are reported and skipped."""
    for d in reversed(list_checkpoints(run)):
        try:
            verify_checkpoint(d)
            return d
        except CheckpointError as e:
            log(f"[checkpoint] skipping {d}: {e}")
    return None


def prune_checkpoints(run: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints of this run; returns what went."""
    found = list_checkpoints(run)
    gone = found[:len(found) - keep]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone


def prune_runs(output_dir: str | os.PathLike, current: str, keep: int) -> list[Path]:
    """Delete the directories of other run identities beyond the `keep` most recently used; never `current`."""
    root = Path(output_dir) / "runs"
    if not root.exists():
        return []
    others = sorted((d for d in root.iterdir() if d.is_dir() and d.name != current),
                    key=lambda d: d.stat().st_mtime, reverse=True)
    for d in others[keep:]:
        shutil.rmtree(d, ignore_errors=True)
    return others[keep:]


def start_run(output_dir: str | os.PathLike, fingerprint: str, identity: dict) -> Path:
    """The run directory of this identity, created with its run.json (and marked most recently used)."""
    d = run_dir(output_dir, fingerprint)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / RUN_INFO, {"fingerprint": fingerprint, "identity": identity})
    return d


# ------------------------------------------------------------------------------------------ trees


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "."
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        return {str(k): _flatten(v, f"{path}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    raise TypeError(f"checkpoint state at {path!r} holds a {type(obj).__name__}, which is not stored without pickle")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_tree(directory: Path, name: str, obj: Any) -> None:
    """`obj` (dicts, lists, numbers, strings, tensors) as `<name>.json` (+ `<name>.safetensors` for tensors)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(obj, "", tensors)
    if tensors:
        save_file(_unshared(tensors), str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(skeleton, sort_keys=True))


def load_tree(directory: Path, name: str) -> Any:
    from safetensors.torch import load_file

    st = directory / f"{name}.safetensors"
    tensors = load_file(str(st)) if st.exists() else {}
    return _unflatten(json.loads((directory / f"{name}.json").read_text()), tensors)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): give later aliases their own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[k] = t.clone() if key in seen and t.numel() else t
        seen.add(key)
    return out


# ------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict:
    """This process's RNG states as a pickle-free tree (JSON values + uint8 tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = list(torch.cuda.get_rng_state_all())
    return st


def set_rng_state(st: dict) -> None:
    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ------------------------------------------------------------------------------------------ save / load


@dataclass
class CheckpointState:
    model: dict[str, torch.Tensor] | None   # full state dict, the model's own parameter names
    optimizer: dict | None                  # full optimizer state dict keyed by parameter name
    scheduler: dict | None
    rng: list[dict]                          # one per rank
    trainer_state: dict


def save_checkpoint(path: str | os.PathLike, state: CheckpointState) -> Path:
    """Write a checkpoint directory atomically; returns its path. Call on one rank only."""
    from safetensors.torch import save_file

    final = Path(path)
    with atomic_dir(final) as tmp:
        if state.model is not None:
            save_file(_unshared({k: v.detach().cpu().contiguous() for k, v in state.model.items()}),
                      str(tmp / "model.safetensors"))
        if state.optimizer is not None:
            save_tree(tmp, "optimizer", state.optimizer)
        if state.scheduler is not None:
            save_tree(tmp, "scheduler", state.scheduler)
        save_tree(tmp, "rng", state.rng)
        (tmp / "trainer_state.json").write_text(json.dumps(state.trainer_state, indent=2, sort_keys=True,
                                                           default=str))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / MANIFEST, {"files": files, "step": state.trainer_state.get("step")})
    return final


def verify_checkpoint(path: str | os.PathLike, names: tuple[str, ...] | None = None) -> dict:
    """Recompute the sha256 of every file (or of `names`) against the manifest; returns the manifest or
    raises CheckpointError."""
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
        if names is not None and name not in names:
            continue
        f = p / name
        if not f.exists():
            raise CheckpointError(str(f), "listed in the manifest but missing")
        actual = sha256_file(f)
        if actual != digest:
            raise CheckpointError(str(f), f"checksum mismatch (manifest {digest[:12]}..., file {actual[:12]}...): "
                                          "corrupted")
    return manifest


def load_checkpoint(path: str | os.PathLike, *, weights: bool = True) -> CheckpointState:
    """Verify and read a checkpoint (rank 0 does; the other ranks get its states by broadcast, so only node 0's
    disk need hold checkpoints). `weights=False` reads (and verifies) only the small files: trainer state,
    scheduler and RNG."""
    from safetensors.torch import load_file

    p = Path(path)
    small = ("trainer_state.json", "scheduler.json", "rng.json", "rng.safetensors")
    verify_checkpoint(p, None if weights else small)

    def tree(name):
        return load_tree(p, name) if (p / f"{name}.json").exists() else None

    return CheckpointState(
        model=load_file(str(p / "model.safetensors")) if weights and (p / "model.safetensors").exists() else None,
        optimizer=tree("optimizer") if weights else None,
        scheduler=tree("scheduler"),
        rng=tree("rng") or [],
        trainer_state=json.loads((p / "trainer_state.json").read_text()),
    )
