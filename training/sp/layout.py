"""The ONE definition of how a global (padded) sequence is split over an SP group.

Notation: padded length ``L`` (a multiple of ``2 * P``), SP degree ``P = U * R`` (Ulysses x ring),
``sp_rank = ring_rank * U + ulysses_rank`` (see :mod:`training.sp.groups`).

Scheme ``"zigzag"`` (default; what the model, the trainer and every attention mode except plain ``ring``
use):

1. cut the sequence into ``2R`` equal *ring chunks* of ``c = L / (2R)`` tokens;
   ring rank ``r`` owns ring chunks ``r`` and ``2R-1-r`` (one early, one late chunk, so causal attention
   work is equal on every ring rank);
2. each ring chunk is cut into ``U`` equal *sub-chunks* of ``c / U`` tokens; Ulysses rank ``u`` takes
   sub-chunk ``u`` of both of its ring rank's chunks.

The local sequence of SP rank ``(r, u)`` is therefore::

    [ r*c + u*c/U, ..., r*c + (u+1)*c/U - 1 ]  ++  [ (2R-1-r)*c + u*c/U, ..., (2R-1-r)*c + (u+1)*c/U - 1 ]

(``L / P`` tokens). After the Ulysses all-to-all (which concatenates the U local sequences in Ulysses-rank
order) a fixed local permutation (:func:`ulysses_to_ring_order`) turns them into the ring-level zigzag
layout ``[chunk r ++ chunk 2R-1-r]`` over the ring group. With ``R = 1`` the two "ring chunks" are the two
halves of the sequence and Ulysses rank ``u`` holds sub-chunk ``u`` of each half; the gathered sequence
after the permutation is simply the whole sequence in order.

Scheme ``"contiguous"`` (used only by the plain, unbalanced ``ring`` mode and by benchmarks): ``R`` ring
chunks of ``L / R``; ring rank ``r`` owns chunk ``r``; Ulysses ranks split it the same way.

Position ids stay global: feed ``shard_positions(...)`` (the global positions held by this rank) to the
model as ``position_ids``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SCHEMES = ("zigzag", "contiguous")


def _sizes(groups_or_sizes: Any) -> tuple[int, int]:
    """(ulysses_size, ring_size) from an SPGroups, a (U, R) tuple or an int P (= ring-only: U=1, R=P)."""
    if hasattr(groups_or_sizes, "ulysses_size"):
        return int(groups_or_sizes.ulysses_size), int(groups_or_sizes.ring_size)
    if isinstance(groups_or_sizes, int):
        return 1, int(groups_or_sizes)
    U, R = groups_or_sizes
    return int(U), int(R)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown layout scheme {scheme!r}; expected one of {SCHEMES}")


def padded_length(seq_len: int, groups_or_sizes: Any) -> int:
    """Smallest length >= seq_len that is a multiple of ``2 * sp_size`` (both schemes use this)."""
    U, R = _sizes(groups_or_sizes)
    m = 2 * U * R
    return max(m, int(math.ceil(seq_len / m)) * m)


def ring_chunks(padded_len: int, ring_size: int, ring_rank: int, scheme: str = "zigzag") -> list[tuple[int, int]]:
    """Global (start, length) of the ring chunks owned by ``ring_rank``, in local order."""
    _check_scheme(scheme)
    R = ring_size
    if scheme == "zigzag":
        if padded_len % (2 * R):
            raise ValueError(f"padded length {padded_len} is not a multiple of 2*ring_size={2 * R}")
        c = padded_len // (2 * R)
        return [(ring_rank * c, c), ((2 * R - 1 - ring_rank) * c, c)]
    if padded_len % R:
        raise ValueError(f"padded length {padded_len} is not a multiple of ring_size={R}")
    c = padded_len // R
    return [(ring_rank * c, c)]


def _rank_coords(groups_or_sizes: Any, sp_rank: int | None) -> tuple[int, int, int, int]:
    U, R = _sizes(groups_or_sizes)
    if sp_rank is None:
        if not hasattr(groups_or_sizes, "sp_rank"):
            raise ValueError("sp_rank is required when sizes (not SPGroups) are given")
        sp_rank = groups_or_sizes.sp_rank
    if not 0 <= sp_rank < U * R:
        raise ValueError(f"sp_rank {sp_rank} out of range for SP size {U * R}")
    ring_rank, ulysses_rank = divmod(int(sp_rank), U)
    return U, R, ring_rank, ulysses_rank


def shard_positions(
    padded_len: int, groups_or_sizes: Any, sp_rank: int | None = None, *, scheme: str = "zigzag",
    device: torch.device | str | None = None,
) -> torch.LongTensor:
    """Global token positions held by SP rank ``sp_rank`` (default: the groups' own), in local order."""
    U, R, r, u = _rank_coords(groups_or_sizes, sp_rank)
    if padded_len % (2 * U * R):
        raise ValueError(f"padded length {padded_len} is not a multiple of 2*sp_size={2 * U * R}; use padded_length()")
    parts = []
    for start, length in ring_chunks(padded_len, R, r, scheme):
        sub = length // U
        parts.append(torch.arange(start + u * sub, start + (u + 1) * sub, device=device))
    return torch.cat(parts)


def all_positions(padded_len: int, groups_or_sizes: Any, *, scheme: str = "zigzag") -> torch.LongTensor:
    """[P, L/P]: row s = shard_positions for SP rank s (the order unshard uses)."""
    U, R = _sizes(groups_or_sizes)
    return torch.stack([shard_positions(padded_len, (U, R), s, scheme=scheme) for s in range(U * R)])


def shard(x: torch.Tensor, dim: int, groups: Any, *, sp_rank: int | None = None,
          scheme: str = "zigzag") -> torch.Tensor:
    """This rank's tokens of a global tensor ``x`` (``x.size(dim)`` must already be the padded length)."""
    L = x.size(dim)
    pos = shard_positions(L, groups, sp_rank, scheme=scheme, device=x.device)
    return x.index_select(dim, pos)


def pad_to(x: torch.Tensor, dim: int, length: int, value: float | int = 0) -> torch.Tensor:
    """Pad ``x`` along ``dim`` with ``value`` up to ``length`` (e.g. segment ids with -1, labels with -100)."""
    extra = length - x.size(dim)
    if extra < 0:
        raise ValueError(f"cannot pad length {x.size(dim)} down to {length}")
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def unshard(x_local: torch.Tensor, dim: int, groups: Any, *, scheme: str = "zigzag") -> torch.Tensor:
    """Differentiable all-gather over the SP group + reorder to global order (tests, inference, logits).

    Backward keeps this rank's slice of the incoming gradient (exact when every rank computes the same
    function of the full tensor, e.g. a loss on unsharded logits); see :func:`training.sp.comm.all_gather_cat`.
    """
    from .comm import all_gather_cat

    if groups is None or getattr(groups, "sp_size", 1) == 1:
        return x_local
    U, R = _sizes(groups)
    gathered = all_gather_cat(x_local, dim, groups.sp_group)  # SP-rank order along dim
    L = gathered.size(dim)
    order = all_positions(L, (U, R), scheme=scheme).reshape(-1).to(x_local.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(L, device=order.device)
    return gathered.index_select(dim, inverse)


def ulysses_to_ring_order(x: torch.Tensor, dim: int, ulysses_size: int, n_chunks: int) -> torch.Tensor:
    """Reorder a sequence gathered over the Ulysses group ([u0: c0 c1 .., u1: c0 c1 .., ...], each sub-chunk
    equal) into ring-chunk order ([c0: u0 u1 .., c1: u0 u1 ..])."""
    if ulysses_size == 1 or n_chunks == 1:
        return x
    shape = list(x.shape)
    S = shape[dim]
    sub = S // (ulysses_size * n_chunks)
    y = x.reshape(shape[:dim] + [ulysses_size, n_chunks, sub] + shape[dim + 1:])
    y = y.transpose(dim, dim + 1)
    return y.reshape(shape)


def ring_to_ulysses_order(x: torch.Tensor, dim: int, ulysses_size: int, n_chunks: int) -> torch.Tensor:
    """Inverse of :func:`ulysses_to_ring_order`: the same block transpose with the two factors swapped."""
    return ulysses_to_ring_order(x, dim, ulysses_size=n_chunks, n_chunks=ulysses_size)
