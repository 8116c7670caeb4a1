"""Exports of a trained stage: immutable, content-addressed `from_pretrained` directories, and `final`, a
pointer to the newest one.

    <output_dir>/exports/<sha256[:16]>/   model (safetensors) + processor; never modified or deleted here
    <output_dir>/final -> exports/<sha256[:16]>   relative symlink, swapped atomically

The version of an export is `longvila.io.sha256_tree` of its directory (the Dagster data version of the
stage asset), so an export is written once per distinct content, and a lineage report that names an older
export still resolves after newer runs moved `final`. Readers (`--init-from .../final`, evaluation) follow
the symlink transparently; they should record `resolve_export(path)` rather than `final` itself.
A `final` that is still a plain directory (the layout before exports were versioned) is moved into
`exports/` the first time.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import torch

from longvila.io import sha256_tree, sweep_once, temp_path

EXPORTS = "exports"
FINAL = "final"


def plain_model(model: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    """A fresh LongVILA model (no adapters, no FSDP) with `model`'s config and generation config holding
    `state` (the plain model's parameter names) in `dtype`, on the CPU; its non-persistent buffers (rotary
    frequencies, position ids) are copied from `model` (FSDP does not shard buffers)."""
    from .model.modeling import LongVILAForCausalLM

    with torch.device("meta"):
        plain = LongVILAForCausalLM(copy.deepcopy(model.config))
    plain.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    for name, buf in model.named_buffers():
        if name not in state:
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner)._buffers[leaf] = buf.detach().to("cpu").clone()
    if plain.config.text_config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


def resolve_export(path: str | os.PathLike) -> Path:
    """The immutable directory behind `path` (`final` or an export itself)."""
    return Path(path).resolve()


def publish(plain: torch.nn.Module, processor, output_dir: str | os.PathLike) -> tuple[Path, str]:
    """Write `plain` + `processor` as an immutable export and point `final` at it; (export dir, sha256)."""
    root = Path(output_dir) / EXPORTS
    root.mkdir(parents=True, exist_ok=True)
    sweep_once(root)  # temporaries of a run killed while exporting (longvila.io's temp scheme)
    tmp = temp_path(root / "export")
    try:
        plain.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        digest = sha256_tree(tmp)
        dest = root / digest[:16]
        if dest.exists():  # the same content was exported before: keep the existing copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    point_final(output_dir, dest)
    return dest, digest


def point_final(output_dir: str | os.PathLike, export_dir: Path) -> None:
    """Atomically make `<output_dir>/final` a relative symlink to `export_dir`."""
    out = Path(output_dir)
    final = out / FINAL
    if final.is_dir() and not final.is_symlink():  # a pre-versioning final/ directory: keep it as an export
        legacy = out / EXPORTS / sha256_tree(final)[:16]
        if legacy.exists():
            shutil.rmtree(final)
        else:
            os.replace(final, legacy)
    link = temp_path(final)
    os.symlink(os.path.relpath(export_dir, out), link)
    os.replace(link, final)
