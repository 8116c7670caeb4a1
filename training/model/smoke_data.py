"""Deterministic random smoke batches (conversations + frames) in the MM-SP batch format.

``SmokeBatchSource(processor, seed=0, batch_size=2, frames=(1, 4), ...)`` yields dicts with
``input_ids, labels, attention_mask, segment_ids, pixel_values, frames_per_sample`` (see
:mod:`training.sp.sharding` for the format). Batch ``i`` depends only on ``(seed, i)``, so every rank of an
SP group (and a resumed run) sees the same data. Options: uneven frame counts (a range), right padding,
packing several samples per row (``pack`` > 1: segment ids 0..k-1, -1 for padding), text-only samples
(``frames=(0, 0)``).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from .processing import IGNORE_INDEX, LongVILAProcessor

WORDS = (
    "the a cat dog person car red blue green walks runs jumps opens closes table door street room park "
    "ball tree bird lake boat sign clock kitchen video scene first then after finally left right near "
    "small big bright dark happy slowly quickly picks throws looks holds sits stands"
).split()
QUESTIONS = [
    "What happens in the video?",
    "Describe the video in detail.",
    "What colour is the car?",
    "Which object appears first?",
    "Where does the scene take place?",
    "How many people are in the scene?",
]


class SmokeBatchSource:
    def __init__(
        self,
        processor: LongVILAProcessor,
        seed: int = 0,
        batch_size: int = 2,
        frames: tuple[int, int] = (1, 4),
        answer_words: tuple[int, int] = (3, 12),
        pack: int = 1,
        pad_to_multiple: int | None = None,
        frame_size: tuple[int, int] = (24, 40),
        max_length: int | None = None,
    ):
        if batch_size < 1 or pack < 1:
            raise ValueError("batch_size and pack must be >= 1")
        if frames[0] < 0 or frames[1] < frames[0]:
            raise ValueError(f"bad frame range {frames}")
        self.processor = processor
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.frames = (int(frames[0]), int(frames[1]))
        self.answer_words = answer_words
        self.pack = int(pack)
        self.pad_to_multiple = pad_to_multiple
        self.frame_size = frame_size
        self.max_length = max_length

    # ------------------------------------------------------------------ samples
    def _sample(self, rng: np.random.Generator) -> tuple[list[dict[str, str]], list[np.ndarray]]:
        n = int(rng.integers(self.frames[0], self.frames[1] + 1))
        h = int(rng.integers(self.frame_size[0], self.frame_size[1] + 1))
        w = int(rng.integers(self.frame_size[0], self.frame_size[1] + 1))
        frames = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]
        q = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        k = int(rng.integers(self.answer_words[0], self.answer_words[1] + 1))
        answer = " ".join(WORDS[int(i)] for i in rng.integers(len(WORDS), size=k)).capitalize() + "."
        human = (f"<video>\n{q}" if n else q)
        conv = [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
        if n and rng.random() < 0.3:  # a second round about the same video
            conv += [{"from": "human", "value": QUESTIONS[int(rng.integers(len(QUESTIONS)))]},
                     {"from": "gpt", "value": WORDS[int(rng.integers(len(WORDS)))] + "."}]
        return conv, frames

    def batch(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(index)])
        p = self.processor
        rows_ids, rows_lab, rows_seg, pix, counts = [], [], [], [], []
        for _ in range(self.batch_size):
            ids: list[int] = []
            lab: list[int] = []
            seg: list[int] = []
            for j in range(self.pack):
                conv, frames = self._sample(rng)
                tokens, labels = p.encode_conversation(conv, len(frames), source=f"smoke batch {index}")
                ids += tokens
                lab += labels
                seg += [j] * len(tokens)
                pix.append(p.preprocess_frames(frames))
                counts.append(len(frames))
            rows_ids.append(ids)
            rows_lab.append(lab)
            rows_seg.append(seg)
        s = max(len(r) for r in rows_ids)
        if self.pad_to_multiple:
            m = int(self.pad_to_multiple)
            s = -(-s // m) * m
        if self.max_length is not None and s > self.max_length:
            raise ValueError(f"smoke batch {index}: {s} tokens exceed max_length {self.max_length}")
        b = self.batch_size
        input_ids = torch.full((b, s), p.pad_token_id, dtype=torch.long)
        labels = torch.full((b, s), IGNORE_INDEX, dtype=torch.long)
        segment_ids = torch.full((b, s), -1, dtype=torch.long)
        for r in range(b):
            n = len(rows_ids[r])
            input_ids[r, :n] = torch.tensor(rows_ids[r])
            labels[r, :n] = torch.tensor(rows_lab[r])
            segment_ids[r, :n] = torch.tensor(rows_seg[r])
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": (segment_ids >= 0).long(),
            "segment_ids": segment_ids,
            "pixel_values": torch.cat(pix, 0),
            "frames_per_sample": torch.tensor(counts, dtype=torch.long),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        i = 0
        while True:
            yield self.batch(i)
            i += 1

    def take(self, n: int, start: int = 0) -> list[dict[str, Any]]:
        return [self.batch(start + i) for i in range(n)]


__all__ = ["SmokeBatchSource"]
