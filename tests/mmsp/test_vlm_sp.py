"""Whole-model MM-SP equivalence: the sharded LongVILA VLM (stage-1 frame sharding + stage-2 zigzag token
sharding + Ulysses / zigzag ring / 2D attention) against the plain single-process model on identical data,
on gloo with world sizes 2 and 4 (world 1 is covered in test_model.py)."""

from __future__ import annotations

import pytest

from training.model import create_smoke_checkpoint
from training.sp.testing import DistributedPool

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CASE = "training.model.sp_checks:case_vlm_grads"

DATA = {
    # uneven frame counts (total not divisible by the SP size) + right padding of the shorter row
    "uneven_padded": dict(seed=3, batch_size=2, frames=(1, 5)),
    # two samples packed per row (segment ids), some samples without frames, padding
    "packed": dict(seed=4, batch_size=2, frames=(0, 3), pack=2),
    # one frame for the whole SP group: most ranks own no frame
    "one_frame": dict(seed=5, batch_size=1, frames=(1, 1)),
    # text only (no pixel_values rows)
    "text_only": dict(seed=6, batch_size=2, frames=(0, 0)),
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_sp")
    return {
        "qwen2": create_smoke_checkpoint(root / "smoke", "smoke", seed=0),
        "llama": create_smoke_checkpoint(root / "smoke-llama", "smoke-llama", seed=1),
    }


@pytest.fixture(scope="module")
def pool2():
    with DistributedPool(2, timeout_s=240) as pool:
        yield pool


@pytest.fixture(scope="module")
def pool4():
    with DistributedPool(4, timeout_s=240) as pool:
        yield pool


def _check(results, tol, *, sp_control=True, world_count=False):
    for per_rank in zip(*results):
        r0 = per_rank[0]
        for other in per_rank[1:]:  # every rank reports the same (reduced) loss
            assert other["loss_sp"] == pytest.approx(r0["loss_sp"], rel=0, abs=1e-12)
        for r in per_rank:
            tag = f"U={r['ulysses']} R={r['ring']}"
            assert r["loss_rel"] <= tol, (tag, r)
            assert r["grad_rel"] <= tol, (tag, r["worst_param"], r)
            if sp_control:  # without the SP gradient reduction the gradients are clearly wrong
                assert r["unsynced_grad_rel"] > 1e-3, (tag, r)
            assert r["params"] > 50
            if not world_count:
                assert r["tokens_sp"] == r["tokens_ref"] > 0


@pytest.mark.parametrize("data", list(DATA))
def test_world2_float64_ulysses_and_ring(pool2, ckpts, data):
    results = pool2.run(CASE, ckpts["qwen2"], "float64", DATA[data], [(2, 1), (1, 2)])
    _check(results, 1e-10)


@pytest.mark.parametrize("data", list(DATA))
def test_world4_float64_ulysses_ring_2d(pool4, ckpts, data):
    # U=4 (K/V heads replicated: 4 query heads, 2 KV heads), zigzag ring R=4, 2D 2x2, and SP=2 x DP=2
    results = pool4.run(CASE, ckpts["qwen2"], "float64", DATA[data], [(4, 1), (1, 4), (2, 2), (1, 2)])
    _check(results, 1e-10)
    frames = results[0][0]["frames"]
    assert frames == {"one_frame": 1, "text_only": 0}.get(data, frames)
    assert frames >= 2 or data in ("one_frame", "text_only")


@pytest.mark.parametrize("data", ["uneven_padded", "packed"])
def test_world4_float32(pool4, ckpts, data):
    results = pool4.run(CASE, ckpts["qwen2"], "float32", DATA[data], [(4, 1), (1, 4), (2, 2)])
    _check(results, 1e-5)


def test_world4_llama_float64(pool4, ckpts):
    results = pool4.run(CASE, ckpts["llama"], "float64", DATA["packed"], [(2, 2), (4, 1)])
    _check(results, 1e-10)


def test_world4_token_weighted_count_over_the_world(pool4, ckpts):
    # SP=2 x DP=2, both replicas on the same batch: the world-wide token count doubles, the DP reduction sums
    results = pool4.run(CASE, ckpts["qwen2"], "float64", DATA["uneven_padded"], [(1, 2), (2, 1)], "auto", "world")
    _check(results, 1e-10, world_count=True)
    for per_rank in results:
        for r in per_rank:
            assert r["tokens_sp"] == 2 * r["tokens_ref"] > 0


def test_world4_with_activation_checkpointing(pool4, ckpts):
    # recomputation during backward must run inside the MM-SP attention context (mmsp_loss(backward=True))
    results = pool4.run(CASE, ckpts["qwen2"], "float64", DATA["packed"], [(2, 2)], "auto", "sp", True)
    _check(results, 1e-10)
    assert all(r[0]["grad_ckpt"] for r in results)


def test_world4_logits_gathered_and_local(pool4, ckpts):
    results = pool4.run("training.model.sp_checks:case_vlm_logits", ckpts["qwen2"], "float64",
                        DATA["packed"], 2, 2)
    seen = []
    for r in results:
        assert r["logits_rel"] <= 1e-10
        assert r["shape"] == r["ref_shape"]
        assert r["local_shape"][1] * 4 == r["padded_len"]
        seen += r["positions"]
    assert sorted(seen) == list(range(results[0]["padded_len"]))  # the 4 shards tile the padded sequence


def test_world4_five_adamw_steps_match_single_process(pool4, ckpts):
    data = dict(seed=7, batch_size=2, frames=(1, 4), pack=1)
    results = pool4.run("training.model.sp_checks:case_vlm_train", ckpts["qwen2"], data, 2, 2, 5, 1e-3)
    for r in results:
        assert len(r["sp"]) == 5
        for a, b in zip(r["sp"], r["ref"]):
            assert abs(a - b) <= 1e-5 * abs(b), r
        assert r["ref"][0] != r["ref"][-1]  # the steps did change the model
        assert r["param_rel"] < 1e-3, r
