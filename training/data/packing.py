"""Sequence packing: several tokenised samples in one row, with segment ids so that attention never
crosses samples (the MM-SP attention and the model's reference path both honour `segment_ids`: 0..k-1
for the k samples of a row, -1 for padding; see training.sp.sharding), position ids
restarting at 0 for every sample, and labels of -100 on prompts and padding.

A tokenised sample is a dict with `input_ids` and `labels` (1-D long tensors, prompt already masked)
and optionally `pixel_values` (frames x C x H x W) whose frames appear, in order, at the sample's image
placeholder tokens. Packing is greedy first-fit in the given order (deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100


@dataclass
class PackedRow:
    input_ids: torch.Tensor          # (L,)
    labels: torch.Tensor             # (L,)
    segment_ids: torch.Tensor        # (L,)  0..k-1 for the k samples, -1 for padding
    position_ids: torch.Tensor       # (L,)  restart at 0 for each sample
    pixel_values: torch.Tensor | None  # (F, C, H, W) frames of all samples in the row, in order
    sample_ids: list[str] = field(default_factory=list)

    @property
    def num_supervised(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def _len(s: dict) -> int:
    return int(s["input_ids"].shape[-1])


def pack_samples(samples: list[dict], max_length: int, pad_token_id: int = 0, pad_to: int | None = None,
                 packing: bool = True) -> list[PackedRow]:
    """Pack samples into rows of at most `max_length` tokens (padded to `pad_to` or the longest row).

    Samples longer than `max_length` must have been filtered before; they raise ValueError here.
    With `packing=False` every sample gets its own row.
    """
    bins: list[list[dict]] = []
    used: list[int] = []
    for s in samples:
        n = _len(s)
        if n > max_length:
            raise ValueError(f"sample {s.get('sample_id')} has {n} tokens > max_length {max_length}")
        placed = False
        if packing:
            for i, u in enumerate(used):
                if u + n <= max_length:
                    bins[i].append(s)
                    used[i] += n
                    placed = True
                    break
        if not placed:
            bins.append([s])
            used.append(n)
    rows = []
    for b in bins:
        rows.append(_concat(b, pad_token_id, pad_to))
    return rows


def _concat(b: list[dict], pad_token_id: int, pad_to: int | None) -> PackedRow:
    ids, labels, seg, pos, pix, sids = [], [], [], [], [], []
    for k, s in enumerate(b):
        n = _len(s)
        ids.append(s["input_ids"].reshape(-1).long())
        lab = s["labels"].reshape(-1).long().clone()
        lab[0] = IGNORE_INDEX  # never predict a sample's first token from the previous sample
        labels.append(lab)
        seg.append(torch.full((n,), k, dtype=torch.long))
        pos.append(torch.arange(n, dtype=torch.long))
        if s.get("pixel_values") is not None and s["pixel_values"].numel():
            pix.append(s["pixel_values"])
        sids.append(str(s.get("sample_id", "")))
    row = PackedRow(torch.cat(ids), torch.cat(labels), torch.cat(seg), torch.cat(pos),
                    torch.cat(pix) if pix else None, sids)
    if pad_to is not None and pad_to > row.input_ids.numel():
        row = pad_row(row, pad_to, pad_token_id)
    return row


def pad_row(row: PackedRow, length: int, pad_token_id: int = 0) -> PackedRow:
    n = length - row.input_ids.numel()
    if n <= 0:
        return row
    return PackedRow(
        torch.cat([row.input_ids, torch.full((n,), pad_token_id, dtype=torch.long)]),
        torch.cat([row.labels, torch.full((n,), IGNORE_INDEX, dtype=torch.long)]),
        torch.cat([row.segment_ids, torch.full((n,), -1, dtype=torch.long)]),
        torch.cat([row.position_ids, torch.arange(n, dtype=torch.long)]),
        row.pixel_values,
        row.sample_ids,
    )


def collate_rows(rows: list[PackedRow], pad_token_id: int = 0) -> dict:
    """Batch packed rows (padded to the longest) into model inputs."""
    L = max(r.input_ids.numel() for r in rows)
    rows = [pad_row(r, L, pad_token_id) for r in rows]
    pix = [r.pixel_values for r in rows if r.pixel_values is not None]
    batch = {
        "input_ids": torch.stack([r.input_ids for r in rows]),
        "labels": torch.stack([r.labels for r in rows]),
        "segment_ids": torch.stack([r.segment_ids for r in rows]),
        "position_ids": torch.stack([r.position_ids for r in rows]),
        "attention_mask": torch.stack([(r.segment_ids >= 0).long() for r in rows]),
        "pixel_values": torch.cat(pix) if pix else None,
        "sample_ids": [r.sample_ids for r in rows],
    }
    return batch


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, L, L) boolean mask: causal and within the same real segment (reference for tests)."""
    s = segment_ids
    same = (s[:, :, None] == s[:, None, :]) & (s[:, :, None] >= 0)
    L = s.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    return same & causal
