"""FSDP2-sharded training equals the replicated trainer (CPU, gloo, spawned ranks, float32): per-step
losses, gradient norms and the parameters after the steps, at world 2 and 4, with SP sharding the
parameters too, gradient accumulation, LoRA (stage 4) and frozen sub-modules (stage 2: vision frozen)."""

import pytest
import torch
from safetensors.torch import load_file

from training.sp.testing import DistributedPool

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _compare(rep: dict, sh: dict, what: str):
    assert rep["sharding"] == "replicate" and sh["sharding"] == "fsdp"
    assert sh["losses"] == pytest.approx(rep["losses"], rel=1e-5), what
    assert sh["grad_norms"] == pytest.approx(rep["grad_norms"], rel=1e-4), what
    a, b = load_file(rep["export"]), load_file(sh["export"])
    assert sorted(a) == sorted(b) and not any("lora_" in k for k in a), what
    worst = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12))
                for k in a if not k.endswith("k_proj.bias"))  # k bias: true gradient 0, Adam amplifies noise
    assert worst < 1e-4, f"{what}: parameters differ by {worst:.2e} (relative)"
    return worst


def _both(pool, root, **kw):
    rep = pool.run("training.parity:case_train", root, "replicate", **kw)[0]
    sh = pool.run("training.parity:case_train", root, "fsdp", **kw)[0]
    return rep, sh


def test_fsdp_equals_replicated_world2(tmp_path, stage_datasets):
    with DistributedPool(2, timeout_s=600) as pool:
        # SP 2 on 2 ranks: the SP group shards the parameters; 2 micro-batches per step; smoke batches
        rep, sh = _both(pool, str(tmp_path / "sp"), max_steps=3, ulysses_degree=2, grad_accum=2)
        assert len(rep["losses"]) == 3
        _compare(rep, sh, "smoke, SP 2, grad accum 2")
        # stage 4: LoRA adapters on the LLM (everything else frozen), RoPE phases; data parallel 2
        rep, sh = _both(pool, str(tmp_path / "lora"), recipe="smoke", stage="4", data=[stage_datasets[4]],
                        max_steps=3, ulysses_degree=1)
        _compare(rep, sh, "stage 4 LoRA, DP 2")
        assert rep["losses"] != pytest.approx([rep["losses"][0]] * 3)  # it trained


def test_fsdp_equals_replicated_world4(tmp_path, stage_datasets):
    with DistributedPool(4, timeout_s=600) as pool:
        # stage 2: vision tower frozen; DP 2 x SP 2 (ranks of one SP group may own no frames)
        rep, sh = _both(pool, str(tmp_path / "s2"), recipe="smoke", stage="2", data=[stage_datasets[1]],
                        max_steps=3, micro_batch_size=1, ulysses_degree=2)
        _compare(rep, sh, "stage 2 (vision frozen), DP 2 x SP 2")


def test_fsdp_mixed_precision_and_cpu_offload_run(tmp_path):
    """bfloat16 compute over float32 master weights, activation checkpointing and CPU offload of the
    sharded states: the run trains (losses fall) and its export is float32-free bfloat16 weights."""
    with DistributedPool(2, timeout_s=600) as pool:
        out = pool.run("training.parity:case_train", str(tmp_path), "fsdp", max_steps=4, ulysses_degree=2,
                       dtype="bfloat16", cpu_offload=True, gradient_checkpointing=True, lr=3e-3)[0]
    assert out["losses"][-1] < out["losses"][0]
    w = load_file(out["export"])
    assert {t.dtype for t in w.values() if t.is_floating_point()} == {torch.bfloat16}
