"""Training-side stage data: records -> tokenised samples (chat template, prompts masked) -> packed rows,
and the deterministic per-step batch order that makes resume exact.

`build_rows(records, processor, max_length, num_frames, ...)` tokenises with the model's processor
(`LongVILAProcessor.encode_conversation`: ChatML template, labels -100 on everything but the
assistant's answers), samples `num_frames` frames uniformly from each video record, renders passkey
records to fill `max_length`, drops samples that do not fit and packs the rest. A dataset with no
usable sample raises `InputError` naming the dataset and why every sample was rejected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from longvila.errors import InputError

from .packing import IGNORE_INDEX, PackedRow, collate_rows, pack_samples
from .passkey import fit_filler_units, render_passkey
from .records import iter_jpeg_images


def uniform_indices(n: int, k: int) -> list[int]:
    """k indices spread uniformly over range(n) (all of them when k >= n)."""
    if k <= 0 or n <= 0:
        return []
    if k >= n:
        return list(range(n))
    return [int(round(x)) for x in np.linspace(0, n - 1, k)]


@dataclass
class RowsReport:
    records: int
    used: int
    too_long: int
    bad: int
    rows: int
    tokens: int
    supervised: int
    reasons: list[str]

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("records", "used", "too_long", "bad", "rows", "tokens", "supervised")}


def _passkey_conversation(meta: dict, processor, max_length: int, source: str, cache: dict) -> list[dict]:
    """A passkey record rendered to fill `fill` (meta, default 1) of `max_length` tokens; shorter targets
    than the bare question get no filler. Raises ValueError("too_long") if even that does not fit."""
    target = max(1, int(round(float(meta.get("fill", 1.0)) * max_length)))
    if target not in cache:
        cache[target] = fit_filler_units(lambda c: len(processor.encode_conversation(c, 0, source=source)[0]), target)
    units = cache[target]
    if units < 0:
        if target == max_length:
            raise ValueError("too_long")
        units = 0
    return render_passkey(meta["passkey"], float(meta["depth"]), units)


def tokenize_record(rec: dict, processor, max_length: int, num_frames: int, source: str,
                    _passkey_units: dict | None = None) -> dict:
    conv = json.loads(rec["conversations"]) if isinstance(rec["conversations"], str) else rec["conversations"]
    kind = rec.get("kind", "")
    if kind == "passkey":
        meta = json.loads(rec.get("meta") or "{}")
        conv = _passkey_conversation(meta, processor, max_length, source,
                                     _passkey_units if _passkey_units is not None else {})
    frames_b = list(rec.get("frames") or [])
    has_video = any("<video>" in t.get("value", "") for t in conv)
    n_img_ph = sum(t.get("value", "").count("<image>") for t in conv)
    if has_video:
        if not frames_b:
            raise InputError(source, "a <video> sample without frames")
        idx = uniform_indices(len(frames_b), num_frames if num_frames > 0 else len(frames_b))
        frames_b = [frames_b[i] for i in idx]
    elif n_img_ph:
        if len(frames_b) < n_img_ph:
            raise InputError(source, f"{n_img_ph} <image> placeholders but {len(frames_b)} frames")
        frames_b = frames_b[:n_img_ph]
    else:
        frames_b = []
    ids, labels = processor.encode_conversation(conv, len(frames_b), source=source)
    if len(ids) > max_length:
        raise ValueError("too_long")
    if not any(label != IGNORE_INDEX for label in labels):
        raise InputError(source, "no supervised (assistant) tokens")
    pix = processor.preprocess_frames(list(iter_jpeg_images(frames_b, source)), source=source) if frames_b else None
    return {
        "sample_id": rec.get("sample_id", ""),
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "pixel_values": pix,
    }


def build_rows(records: list[dict], processor, max_length: int, num_frames: int, packing: bool = True,
               source: str = "dataset", log=None) -> tuple[list[PackedRow], RowsReport]:
    samples, too_long, bad, reasons = [], 0, 0, []
    cache: dict = {}
    for rec in records:
        src = f"{source}:{rec.get('sample_id', '?')}"
        try:
            samples.append(tokenize_record(rec, processor, max_length, num_frames, src, cache))
        except ValueError as e:
            if str(e) == "too_long":
                too_long += 1
                continue
            raise
        except InputError as e:
            bad += 1
            if len(reasons) < 5:
                reasons.append(str(e))
            if log:
                log(f"[data] skipping {e}")
    if not samples:
        raise InputError(source, f"zero usable samples: {len(records)} records, {too_long} longer than "
                                 f"max_length {max_length}, {bad} unusable"
                                 + (f" ({'; '.join(reasons)})" if reasons else ""))
    pad_id = processor.pad_token_id if processor.pad_token_id is not None else 0
    rows = pack_samples(samples, max_length, pad_token_id=pad_id, packing=packing)
    rep = RowsReport(records=len(records), used=len(samples), too_long=too_long, bad=bad, rows=len(rows),
                     tokens=int(sum(s["input_ids"].numel() for s in samples)),
                     supervised=int(sum(int((s["labels"] != IGNORE_INDEX).sum()) for s in samples)), reasons=reasons)
    return rows, rep


class StepOrder:
    """Deterministic assignment of packed rows to (step, micro-batch, data-parallel rank).

    Rows are visited in a seeded permutation per epoch; global step `s` consumes rows
    `[s*R, (s+1)*R)` of the infinite epoch-concatenated order, R = dp_size * micro_batch * grad_accum.
    The data position of a checkpoint is therefore just its step number.
    """

    def __init__(self, num_rows: int, seed: int, dp_size: int, micro_batch: int, grad_accum: int):
        self.n = num_rows
        self.seed = seed
        self.dp_size = dp_size
        self.micro = micro_batch
        self.accum = grad_accum
        self._perms: dict[int, list[int]] = {}

    @property
    def rows_per_step(self) -> int:
        return self.dp_size * self.micro * self.accum

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def global_index(self, i: int) -> int:
        return self._perm(i // self.n)[i % self.n]

    def micro_batches(self, step: int, dp_rank: int) -> list[list[int]]:
        """Row indices of this rank's `grad_accum` micro-batches at `step`."""
        base = step * self.rows_per_step
        out = []
        for a in range(self.accum):
            start = base + (a * self.dp_size + dp_rank) * self.micro
            out.append([self.global_index(start + j) for j in range(self.micro)])
        return out

    def epoch_at(self, step: int) -> float:
        return step * self.rows_per_step / max(1, self.n)


__all__ = ["build_rows", "tokenize_record", "StepOrder", "RowsReport", "uniform_indices", "collate_rows"]
