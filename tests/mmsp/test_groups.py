"""MM-SP process groups and the zigzag layout (the one definition of who holds which tokens)."""

from __future__ import annotations

import pytest
import torch

from training.sp.groups import SPGroups, group_ranks, init_sp_groups
from training.sp.layout import (
    all_positions,
    pad_to,
    padded_length,
    ring_chunks,
    ring_to_ulysses_order,
    shard,
    shard_positions,
    ulysses_to_ring_order,
)
from training.sp.testing import DistributedPool

# (U, R) -> for each global rank of world 4: {group: members}
EXPECTED_W4 = {
    (4, 1): {r: {"sp": [0, 1, 2, 3], "ulysses": [0, 1, 2, 3], "ring": [r], "dp": [r]} for r in range(4)},
    (2, 2): {
        0: {"sp": [0, 1, 2, 3], "ulysses": [0, 1], "ring": [0, 2], "dp": [0]},
        1: {"sp": [0, 1, 2, 3], "ulysses": [0, 1], "ring": [1, 3], "dp": [1]},
        2: {"sp": [0, 1, 2, 3], "ulysses": [2, 3], "ring": [0, 2], "dp": [2]},
        3: {"sp": [0, 1, 2, 3], "ulysses": [2, 3], "ring": [1, 3], "dp": [3]},
    },
    (1, 4): {r: {"sp": [0, 1, 2, 3], "ulysses": [r], "ring": [0, 1, 2, 3], "dp": [r]} for r in range(4)},
    (2, 1): {  # dp = 2: two SP groups of consecutive ranks; DP pairs ranks with the same sp_rank
        0: {"sp": [0, 1], "ulysses": [0, 1], "ring": [0], "dp": [0, 2]},
        1: {"sp": [0, 1], "ulysses": [0, 1], "ring": [1], "dp": [1, 3]},
        2: {"sp": [2, 3], "ulysses": [2, 3], "ring": [2], "dp": [0, 2]},
        3: {"sp": [2, 3], "ulysses": [2, 3], "ring": [3], "dp": [1, 3]},
    },
}


@pytest.mark.parametrize("sizes", list(EXPECTED_W4))
def test_group_formula_world4(sizes):
    for rank in range(4):
        assert group_ranks(4, *sizes, rank) == EXPECTED_W4[sizes][rank]


def test_group_degrees_must_divide_world():
    with pytest.raises(ValueError, match="not divisible"):
        group_ranks(4, 3, 1, 0)
    with pytest.raises(ValueError, match=">= 1"):
        group_ranks(4, 0, 1, 0)


def test_single_process_groups():
    g = init_sp_groups(1, 1)
    assert isinstance(g, SPGroups)
    assert (g.world_size, g.sp_size, g.dp_size, g.sp_rank) == (1, 1, 1, 0)
    assert g.sp_group is None and g.ring_group is None
    with pytest.raises(RuntimeError, match="torch.distributed"):
        init_sp_groups(2, 1)


@pytest.mark.distributed
def test_process_groups_world4():
    """Real gloo ProcessGroups at world 4: members match the documented formula and the expected table."""
    with DistributedPool(4) as pool:
        for sizes, expected in EXPECTED_W4.items():
            results = pool.run("training.sp.testing:case_groups", *sizes)
            for rank, res in enumerate(results):
                assert res["members"] == expected[rank], (sizes, rank)
                assert res["formula"] == expected[rank]
                f = res["fields"]
                U, R = sizes
                assert f["rank"] == rank and f["world_size"] == 4
                assert (f["ulysses_size"], f["ring_size"], f["sp_size"], f["dp_size"]) == (U, R, U * R, 4 // (U * R))
                assert f["sp_rank"] == rank % (U * R)
                assert f["ring_rank"] * U + f["ulysses_rank"] == f["sp_rank"]
                assert f["dp_rank"] == rank // (U * R)


# ----------------------------------------------------------------------------------------------- layout
def test_padded_length():
    assert padded_length(16, (2, 2)) == 16
    assert padded_length(17, (2, 2)) == 24
    assert padded_length(1, (1, 1)) == 2
    assert padded_length(10, 4) == 16  # int = ring only


def test_zigzag_positions_documented_example():
    # L=16, U=2, R=2: ring chunks of 4 (rank 0: chunks 0 and 3; rank 1: chunks 1 and 2), Ulysses halves
    expect = {0: [0, 1, 12, 13], 1: [2, 3, 14, 15], 2: [4, 5, 8, 9], 3: [6, 7, 10, 11]}
    for s, pos in expect.items():
        assert shard_positions(16, (2, 2), s).tolist() == pos
    # R=1 degenerates to a Ulysses split of each half
    assert shard_positions(8, (2, 1), 0).tolist() == [0, 1, 4, 5]
    assert shard_positions(8, (2, 1), 1).tolist() == [2, 3, 6, 7]
    # plain contiguous layout
    assert shard_positions(8, (1, 2), 1, scheme="contiguous").tolist() == [4, 5, 6, 7]
    assert ring_chunks(16, 4, 1) == [(2, 2), (12, 2)]


@pytest.mark.parametrize("sizes", [(1, 1), (2, 1), (1, 2), (4, 1), (2, 2), (1, 4), (2, 4)])
@pytest.mark.parametrize("scheme", ["zigzag", "contiguous"])
def test_layout_is_a_partition(sizes, scheme):
    L = padded_length(37, sizes)
    allp = all_positions(L, sizes, scheme=scheme)
    assert sorted(allp.reshape(-1).tolist()) == list(range(L))
    x = torch.arange(L).unsqueeze(0) * 10
    for s in range(sizes[0] * sizes[1]):
        assert shard(x, 1, sizes, sp_rank=s, scheme=scheme).squeeze(0).tolist() == (allp[s] * 10).tolist()


@pytest.mark.parametrize("R", [2, 4, 8])
def test_zigzag_balances_causal_work(R):
    """Causal (q, k) pairs per ring rank: equal with zigzag, skewed with the contiguous layout."""
    L = 64

    def work(scheme):
        out = []
        for r in range(R):
            pos = shard_positions(L, (1, R), r, scheme=scheme)
            out.append(int((pos + 1).sum()))  # query at position p attends p+1 keys
        return out

    zz, cont = work("zigzag"), work("contiguous")
    assert len(set(zz)) == 1
    assert max(cont) > max(zz) and min(cont) < min(zz)
    assert sum(zz) == sum(cont) == L * (L + 1) // 2


@pytest.mark.parametrize("U,n_chunks", [(2, 2), (4, 2), (2, 1), (3, 2)])
def test_ulysses_ring_reorder(U, n_chunks):
    sub = 3
    # gathered order: [u0: c0 c1, u1: c0 c1, ...] with values encoding (chunk, u, i)
    parts = [[(c, u, i) for c in range(n_chunks) for i in range(sub)] for u in range(U)]
    flat = [t for p in parts for t in p]
    x = torch.tensor([c * 1000 + u * 100 + i for c, u, i in flat]).view(1, -1, 1)
    y = ulysses_to_ring_order(x, 1, U, n_chunks)
    expect = [c * 1000 + u * 100 + i for c in range(n_chunks) for u in range(U) for i in range(sub)]
    assert y.view(-1).tolist() == expect
    assert torch.equal(ring_to_ulysses_order(y, 1, U, n_chunks), x)


def test_ulysses_gather_gives_ring_layout():
    """The U local sequences of a Ulysses group, concatenated and reordered, are the ring rank's zigzag chunks."""
    U, R, L = 2, 2, 32
    for r in range(R):
        gathered = torch.cat([shard_positions(L, (U, R), r * U + u) for u in range(U)])
        ring_local = ulysses_to_ring_order(gathered.view(1, -1), 1, U, 2).view(-1)
        expect = torch.cat([torch.arange(g, g + n) for g, n in ring_chunks(L, R, r)])
        assert torch.equal(ring_local, expect)


def test_pad_to():
    x = torch.tensor([[1, 2, 3]])
    assert pad_to(x, 1, 5, -1).tolist() == [[1, 2, 3, -1, -1]]
    assert pad_to(x, 1, 3) is x
    with pytest.raises(ValueError):
        pad_to(x, 1, 2)


def test_bad_layout_arguments():
    with pytest.raises(ValueError, match="multiple"):
        shard_positions(10, (2, 2), 0)
    with pytest.raises(ValueError, match="out of range"):
        shard_positions(16, (2, 2), 4)
    with pytest.raises(ValueError, match="scheme"):
        ring_chunks(16, 2, 0, "stripe")
