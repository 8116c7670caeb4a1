"""Document ranges of packed rows and the block plan of (ring) attention -- no S x S mask anywhere.

Semantics (the one definition of packed attention in the project): query i attends key j iff both carry the
same non-negative segment id and, when causal, ``pos(j) <= pos(i)``. Ids < 0 are padding: they attend
nothing, nobody attends them, their output is 0. A document may be several runs of its id (a 2-D padding
mask with a hole, say): all runs of one id see each other.

Layout: a rank's query rows are chunks ``(local_offset, length, global_start)`` (see :mod:`training.sp.layout`);
the K/V block held at ring step ``s`` is the chunk list of rank ``(rank - s) % R``. Row ``t`` of batch row
``b`` sits at flat (token-major) index ``b * S + t``. The plan of one step is a list of :class:`PieceSet`:
one kernel call each (:class:`training.kernels.VarlenLayout`), pieces with pairwise disjoint query rows,
either square causal pieces (a document's part of a chunk against itself) or full pieces. Planning costs
O(S) tensor work plus O(runs x chunks) Python per (segments, layout), and is cached per segments tensor.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from training.kernels import VarlenLayout


class Chunk(NamedTuple):
    local: int  # offset in the rank's local sequence
    length: int
    start: int  # global position of its first token

    @property
    def end(self) -> int:
        return self.start + self.length


Run = tuple[int, int, int]  # (start, end, document id) in global positions, id >= 0


def document_runs(segments: torch.Tensor | None, batch: int, length: int) -> list[list[Run]]:
    """Per batch row, the runs of equal non-negative segment id, sorted (None: one document per row)."""
    if segments is None:
        return [[(0, length, 0)] for _ in range(batch)]
    if tuple(segments.shape) != (batch, length):
        raise ValueError(f"segment ids of shape {tuple(segments.shape)} for {batch} rows of {length} tokens")
    flat = segments.detach().to("cpu", torch.long).reshape(-1)
    change = torch.ones_like(flat, dtype=torch.bool)
    change[1:] = flat[1:] != flat[:-1]
    change[::length] = True
    starts = change.nonzero().squeeze(1)
    ends = torch.cat([starts[1:], torch.tensor([flat.numel()])])
    keep = flat[starts] >= 0
    rows: list[list[Run]] = [[] for _ in range(batch)]
    for s, e, d in zip(starts[keep].tolist(), ends[keep].tolist(), flat[starts][keep].tolist()):
        b = s // length
        rows[b].append((s - b * length, e - b * length, d))
    return rows


def _overlapping(runs: list, lo: int, hi: int, starts: list[int]):
    """Runs (sorted, disjoint; ``starts`` = their start positions) that intersect [lo, hi), clipped."""
    i = max(bisect.bisect_right(starts, lo) - 1, 0)
    while i < len(runs) and runs[i][0] < hi:
        s, e = runs[i][0], runs[i][1]
        if e > lo:
            yield max(s, lo), min(e, hi), runs[i]
        i += 1


def split_causal(qa: int, qb: int, ka: int, kb: int, causal: bool) -> list[tuple[int, int, int, int, bool]]:
    """Pieces ``(q0, q1, k0, k1, square_causal)`` of queries [qa, qb) attending keys [ka, kb) of one document
    (global positions): keys before the queries are full, the overlap is a square causal piece plus a full
    piece for the queries after it, keys after the queries drop out."""
    if not causal:
        return [(qa, qb, ka, kb, False)]
    out = []
    before = min(kb, qa)
    if ka < before:
        out.append((qa, qb, ka, before, False))
    oa, ob = max(ka, qa), min(kb, qb)
    if oa < ob:
        out.append((oa, ob, oa, ob, True))
        if ob < qb:
            out.append((ob, qb, oa, ob, False))
    return out


class Rows:
    """Rows of a token-major tensor given as (start, length) ranges: a slice when they form one run, else
    an index made once per device. ``take`` gathers, ``put_`` / ``add_`` scatter (``add_`` accumulates
    duplicates)."""

    def __init__(self, ranges: list[tuple[int, int]]):
        merged: list[list[int]] = []
        for s, n in ranges:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1][1] += n
            else:
                merged.append([s, n])
        self.ranges = [tuple(r) for r in merged]
        self.count = sum(n for _, n in merged)
        self.slice = slice(merged[0][0], merged[0][0] + merged[0][1]) if len(merged) == 1 else None
        self._index: dict[str, torch.Tensor] = {}

    def index(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._index:
            self._index[key] = torch.cat([torch.arange(s, s + n) for s, n in self.ranges]).to(device)
        return self._index[key]

    def covers(self, n: int) -> bool:
        return self.slice == slice(0, n)

    def take(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.slice] if self.slice is not None else x.index_select(0, self.index(x.device))

    def put_(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        if self.slice is not None:
            dst[self.slice] = src
        else:
            dst.index_copy_(0, self.index(dst.device), src.to(dst.dtype))

    def add_(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        if self.slice is not None:
            dst[self.slice] += src
        else:
            dst.index_add_(0, self.index(dst.device), src.to(dst.dtype))


@dataclass
class PieceSet:
    """One kernel call: its layout, the query / key rows it reads (flat), and whether no earlier call of the
    schedule wrote any of its query rows (``first``: results are stored, not merged)."""

    layout: VarlenLayout
    q_rows: Rows
    k_rows: Rows
    first: bool = False


@dataclass
class Schedule:
    """Per ring step, the kernel calls; ``work`` = (query, key) score entries evaluated (a square causal
    piece counts its lower triangle) and ``skipped`` = chunk pairs left out entirely (K/V after Q)."""

    steps: list[list[PieceSet]]
    work: int = 0
    skipped: int = 0
    _ref: object = field(default=None, repr=False)


def _pieces(rows: list[list[Run]], q_chunks, kv_chunks, causal: bool, s_q: int, s_k: int):
    """(square causal pieces, full pieces) of one step as (q_flat, q_len, k_flat, k_len) tuples."""
    square, full = [], {}
    for b, runs in enumerate(rows):
        starts = [r[0] for r in runs]
        by_doc: dict[int, list] = {}
        for r in runs:
            by_doc.setdefault(r[2], []).append(r)
        doc_starts = {d: [r[0] for r in rs] for d, rs in by_doc.items()}
        for qc in q_chunks:
            for qa, qb, run in _overlapping(runs, qc.start, qc.end, starts):
                for kc in kv_chunks:
                    if causal and kc.start >= qb:
                        continue
                    for ka, kb, _ in _overlapping(by_doc[run[2]], kc.start, kc.end, doc_starts[run[2]]):
                        for p0, p1, x0, x1, sq in split_causal(qa, qb, ka, kb, causal):
                            qf = b * s_q + qc.local + p0 - qc.start
                            kf = b * s_k + kc.local + x0 - kc.start
                            if sq:
                                square.append((qf, p1 - p0, kf, x1 - x0))
                            else:
                                full.setdefault((qf, p1 - p0), []).append((kf, x1 - x0))
    merged_full = []
    for (qf, qn), ks in full.items():
        for kf, kn in Rows(sorted(ks)).ranges:  # keys adjacent in local memory become one piece
            merged_full.append((qf, qn, kf, kn))
    return sorted(square), sorted(merged_full)


def _calls(pieces: list[tuple[int, int, int, int]], causal: bool) -> list[PieceSet]:
    """Group pieces (sorted by query row) into kernel calls whose query rows are pairwise disjoint."""
    rounds: list[list] = []
    for p in pieces:
        for r in rounds:
            if r[-1][0] + r[-1][1] <= p[0]:
                r.append(p)
                break
        else:
            rounds.append([p])
    calls = []
    for r in rounds:
        cu_q, cu_k = [0], [0]
        for _, qn, _, kn in r:
            cu_q.append(cu_q[-1] + qn)
            cu_k.append(cu_k[-1] + kn)
        calls.append(PieceSet(VarlenLayout(causal, tuple(cu_q), tuple(cu_k)), Rows([(p[0], p[1]) for p in r]),
                              Rows([(p[2], p[3]) for p in r])))
    return calls


def _work(pieces, square: bool) -> int:
    return sum(qn * (qn + 1) // 2 if square else qn * kn for _, qn, _, kn in pieces)


def _mark_first(steps: list[list[PieceSet]]) -> None:
    covered: list[tuple[int, int]] = []  # sorted, disjoint [start, end) of query rows written so far
    for calls in steps:
        for call in calls:
            call.first = not any(_overlaps(covered, s, s + n) for s, n in call.q_rows.ranges)
            for s, n in call.q_rows.ranges:
                bisect.insort(covered, (s, s + n))


def _overlaps(intervals: list[tuple[int, int]], lo: int, hi: int) -> bool:
    i = bisect.bisect_left(intervals, (lo, lo))
    return (i < len(intervals) and intervals[i][0] < hi) or (i > 0 and intervals[i - 1][1] > lo)


def build_schedule(segments: torch.Tensor | None, q_chunks: list[Chunk], chunks: list[list[Chunk]], rank: int,
                   causal: bool, batch: int, s_q: int, s_k: int) -> Schedule:
    """The plan of every ring step for ``rank`` (step s uses the K/V chunks of rank (rank - s) % R)."""
    length = max(c.end for cs in chunks for c in cs)
    rows = document_runs(segments, batch, length)
    sched = Schedule(steps=[])
    R = len(chunks)
    for step in range(R):
        kv_chunks = chunks[(rank - step) % R]
        square, full = _pieces(rows, q_chunks, kv_chunks, causal, s_q, s_k)
        sched.steps.append(_calls(square, True) + _calls(full, False))
        sched.work += _work(square, True) + _work(full, False)
        sched.skipped += sum(causal and kc.start >= qc.end for qc in q_chunks for kc in kv_chunks)
    _mark_first(sched.steps)
    return sched


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 16


def cached_schedule(segments: torch.Tensor | None, q_chunks: list[Chunk], chunks: list[list[Chunk]], rank: int,
                    causal: bool, batch: int, s_q: int, s_k: int) -> Schedule:
    """:func:`build_schedule`, memoised per segments tensor (by identity and version: every layer of a
    forward reuses the plan) and layout."""
    key = (id(segments), getattr(segments, "_version", None), tuple(q_chunks), tuple(map(tuple, chunks)), rank,
           causal, batch, s_q, s_k)
    hit = _CACHE.get(key)
    if hit is not None and hit._ref is segments:
        _CACHE.move_to_end(key)
        return hit
    sched = build_schedule(segments, q_chunks, chunks, rank, causal, batch, s_q, s_k)
    sched._ref = segments
    _CACHE[key] = sched
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return sched


__all__ = ["Chunk", "PieceSet", "Rows", "Schedule", "build_schedule", "cached_schedule", "document_runs",
           "split_causal"]
