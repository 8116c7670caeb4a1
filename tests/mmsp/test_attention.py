"""MM-SP attention (Ulysses, plain ring, zigzag ring, 2D) against full single-process attention, in one
process and on 2 and 4 gloo processes; the registered ``mmsp`` attention inside stock transformers LLMs."""

from __future__ import annotations

import pytest
import torch

from training.sp import register_mmsp_attention, sp_attention, sp_batch_context
from training.sp.attention import resolve_mode
from training.sp.groups import SPGroups
from training.kernels import block_kernel
from training.sp.testing import DistributedError, DistributedPool, make_segments, reference_attention, tiny_llm
from training.sp.ulysses import kv_replication_factor

TOL = {"float64": 1e-10, "float32": 1e-5}


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------------------------------ one process
@pytest.mark.parametrize("kernel", ["cpu_flash", "math"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("causal,segments", [(True, None), (True, "packed_padded"), (False, "padded"), (False, None)])
def test_local_attention_matches_reference(kernel, dtype, causal, segments):
    gen = torch.Generator().manual_seed(1)
    B, Hq, Hkv, S, D = 2, 4, 2, 24, 8
    dt = getattr(torch, dtype)
    q, k, v = (torch.randn(B, h, S, D, generator=gen, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    seg = make_segments(B, S, segments, gen)
    dout = torch.randn(B, Hq, S, D, generator=gen, dtype=torch.float64)
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qr, kr, vr, causal=causal, segment_ids=seg)
    ref.backward(dout)
    with block_kernel(kernel):
        ql, kl, vl = (t.to(dt).requires_grad_() for t in (q, k, v))
        out = sp_attention(ql, kl, vl, groups=None, causal=causal, segment_ids=seg)
        out.backward(dout.to(dt))
    assert out.dtype == dt
    for got, want in ((out, ref), (ql.grad, qr.grad), (kl.grad, kr.grad), (vl.grad, vr.grad)):
        assert torch.isfinite(got).all()
        assert rel(got, want) <= TOL[dtype]
    if seg is not None:  # padding queries produce exactly zero output and gradient
        pad = (seg < 0)[:, None, :, None].expand_as(out)
        assert out.detach()[pad].abs().max() == 0 if pad.any() else True


def test_kv_replication_factor():
    assert kv_replication_factor(8, 8, 4) == 1
    assert kv_replication_factor(8, 4, 4) == 1
    assert kv_replication_factor(8, 2, 4) == 2
    assert kv_replication_factor(8, 1, 4) == 4
    assert kv_replication_factor(12, 4, 6) == 3
    with pytest.raises(ValueError, match="must divide the number of query heads"):
        kv_replication_factor(6, 2, 4)


def test_mode_validation():
    g22 = SPGroups(4, 0, 4, 2, 2, 1, 0, 0, 0, 0)
    assert resolve_mode("auto", g22) == "2d"
    assert resolve_mode("auto", SPGroups(4, 0, 4, 4, 1, 1, 0, 0, 0, 0)) == "ulysses"
    assert resolve_mode("auto", SPGroups(4, 0, 4, 1, 4, 1, 0, 0, 0, 0)) == "zigzag_ring"
    with pytest.raises(ValueError, match="ring size 1"):
        resolve_mode("ulysses", g22)
    with pytest.raises(ValueError, match="Ulysses size 1"):
        resolve_mode("zigzag_ring", g22)
    with pytest.raises(ValueError, match="unknown"):
        resolve_mode("stripe", g22)


def test_bad_shapes():
    q = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        sp_attention(q, torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8), groups=None)
    with pytest.raises(ValueError, match="segment_ids shape"):
        sp_attention(q, q, q, groups=None, segment_ids=torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="4-D"):
        sp_attention(q[0], q[0], q[0], groups=None)


@pytest.fixture(scope="module")
def mmsp_name():
    return register_mmsp_attention()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_registered_attention_world1_identical_to_sdpa(arch, mmsp_name):
    ref = tiny_llm(arch, attn="sdpa", initializer_range=0.3)
    model = tiny_llm(arch, attn=mmsp_name, initializer_range=0.3)
    assert model.config._attn_implementation == mmsp_name
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 128, (2, 21), generator=gen)
    with torch.no_grad():
        assert rel(model(input_ids=ids).logits, ref(input_ids=ids).logits) <= 1e-12
        # right padding with a 2-D attention mask: the valid positions match sdpa
        mask = torch.ones_like(ids)
        mask[1, 15:] = 0
        a = model(input_ids=ids, attention_mask=mask).logits
        b = ref(input_ids=ids, attention_mask=mask).logits
        valid = mask.bool()
        assert rel(a[valid], b[valid]) <= 1e-12
        # packing through the batch context == running each document on its own with sdpa
        seg = torch.tensor([[0] * 8 + [1] * 13, [0] * 21])
        pos = torch.cat([torch.arange(8), torch.arange(13)]).unsqueeze(0).expand(2, -1).clone()
        pos[1] = torch.arange(21)
        with sp_batch_context(seg, groups=None):
            a = model(input_ids=ids, position_ids=pos).logits
        doc0 = ref(input_ids=ids[:1, :8]).logits[0]
        doc1 = ref(input_ids=ids[:1, 8:]).logits[0]
        assert rel(a[0, :8], doc0) <= 1e-12
        assert rel(a[0, 8:], doc1) <= 1e-12
        assert rel(a[1], ref(input_ids=ids[1:]).logits[0]) <= 1e-12
        # without the context the second document sees the first one (the segment mask is what separates them)
        assert rel(model(input_ids=ids, position_ids=pos).logits[0, 8:], doc1) > 1e-3


def test_batch_context_nesting_and_validation():
    from training.sp.attention import current_batch_context

    assert current_batch_context() is None
    seg = torch.zeros(1, 4, dtype=torch.long)
    with sp_batch_context(seg, groups=None) as outer:
        with sp_batch_context(None, groups=None, causal=False) as inner:
            assert current_batch_context() is inner
        assert current_batch_context() is outer
    assert current_batch_context() is None
    with pytest.raises(ValueError, match="batch, local_seq"):
        with sp_batch_context(torch.zeros(4, dtype=torch.long)):
            pass
    with pytest.raises(ValueError, match="unknown"):
        with sp_batch_context(None, mode="stripe"):
            pass


def test_unsupported_features_fail_loudly(mmsp_name):
    from training.sp.attention import mmsp_attention_forward

    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="dropout"):
        mmsp_attention_forward(None, q, q, q, None, dropout=0.1)
    with pytest.raises(NotImplementedError, match="sliding-window"):
        mmsp_attention_forward(None, q, q, q, None, sliding_window=2)
    with pytest.raises(ValueError, match="2-D padding mask"):
        mmsp_attention_forward(None, q, q, q, torch.ones(1, 1, 4, 4, dtype=torch.bool))


def test_registered_attention_generate(mmsp_name):
    """Decoding with a KV cache (query shorter than keys) in one process gives sdpa's greedy tokens."""
    ref = tiny_llm("qwen2", attn="sdpa", initializer_range=0.3)
    model = tiny_llm("qwen2", attn=mmsp_name, initializer_range=0.3)
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(5))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kw), ref.generate(ids, **kw))


def test_registered_attention_trains(mmsp_name):
    """Gradients through the registered attention equal sdpa's (float64, one process)."""
    ref = tiny_llm("qwen2", attn="sdpa", initializer_range=0.3)
    model = tiny_llm("qwen2", attn=mmsp_name, initializer_range=0.3)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(7))
    for m in (ref, model):
        m(input_ids=ids, labels=ids).loss.backward()
    for (n, p), (_, p2) in zip(ref.named_parameters(), model.named_parameters()):
        assert rel(p2.grad, p.grad) <= 1e-10, n


# ------------------------------------------------------------------------------------------ 2 and 4 processes
@pytest.fixture(scope="module")
def pool2():
    with DistributedPool(2) as pool:
        yield pool


@pytest.fixture(scope="module")
def pool4():
    with DistributedPool(4) as pool:
        yield pool


def _check(results, dtype):
    for rank, r in enumerate(results):
        for name in ("out", "dq", "dk", "dv"):
            assert r[name + "_finite"], (rank, name)
            assert r[name] <= TOL[dtype], (rank, name, r[name])


CASES_W2 = [
    # (U, R, mode, Hq, Hkv, segments, causal)
    (2, 1, "ulysses", 4, 1, None, True),  # GQA with Hkv < U: K/V heads replicated
    (2, 1, "ulysses", 4, 2, "packed_padded", True),
    (1, 2, "zigzag_ring", 4, 2, None, True),
    (1, 2, "zigzag_ring", 4, 1, "packed_padded", True),
    (1, 2, "ring", 4, 2, None, True),
    (1, 2, "ring", 2, 1, "packed_padded", True),
    (1, 2, "zigzag_ring", 4, 2, "padded", False),
    (2, 1, "ulysses", 4, 4, None, False),
]

CASES_W4 = [
    (4, 1, "ulysses", 4, 2, None, True),  # Hkv=2 < U=4
    (4, 1, "ulysses", 8, 8, "packed_padded", True),
    (1, 4, "zigzag_ring", 4, 2, None, True),
    (1, 4, "zigzag_ring", 4, 1, "packed_padded", True),
    (1, 4, "ring", 4, 2, None, True),
    (1, 4, "ring", 4, 2, "packed_padded", True),
    (2, 2, "2d", 4, 1, None, True),  # Hkv=1 < U=2
    (2, 2, "2d", 4, 2, "packed_padded", True),
    (2, 2, "2d", 4, 2, "padded", False),
    (2, 1, "ulysses", 4, 2, "packed_padded", True),  # data parallel 2 x SP 2
    (1, 2, "zigzag_ring", 4, 2, "packed_padded", True),  # data parallel 2 x SP 2
]


def _cfg(case, dtype, L, kernel="auto", seed=0):
    U, R, mode, Hq, Hkv, seg, causal = case
    return dict(ulysses=U, ring=R, mode=mode, dtype=dtype, B=2, Hq=Hq, Hkv=Hkv, L=L, D=8, causal=causal,
                segments=seg, seed=seed, kernel=kernel)


def _case_id(c) -> str:
    return f"{c[2]}-U{c[0]}R{c[1]}-h{c[3]}kv{c[4]}-{c[5]}-{'causal' if c[6] else 'full'}"


@pytest.mark.distributed
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES_W2, ids=_case_id)
def test_sp_attention_world2(pool2, case, dtype):
    _check(pool2.run("training.sp.testing:case_attention", _cfg(case, dtype, L=40)), dtype)


@pytest.mark.distributed
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES_W4, ids=_case_id)
def test_sp_attention_world4(pool4, case, dtype):
    _check(pool4.run("training.sp.testing:case_attention", _cfg(case, dtype, L=48)), dtype)


@pytest.mark.distributed
@pytest.mark.parametrize("case", [CASES_W2[3], CASES_W2[1]], ids=["zigzag", "ulysses"])
def test_bfloat16_world2(pool2, case):
    """bf16 inputs (fp32 log-sum-exp merge): close to the float64 reference at bf16 precision."""
    for r in pool2.run("training.sp.testing:case_attention", _cfg(case, "bfloat16", L=40)):
        for name in ("out", "dq", "dk", "dv"):
            assert r[name + "_finite"] and r[name] <= 3e-2, (name, r[name])


@pytest.mark.distributed
@pytest.mark.parametrize("case", [CASES_W4[7], CASES_W4[1]], ids=["2d-packed", "ulysses4-packed"])
def test_bfloat16_world4(pool4, case):
    """bf16 through the fused kernels on 4 ranks (2D ring merges in fp32): within bf16 precision."""
    for r in pool4.run("training.sp.testing:case_attention", _cfg(case, "bfloat16", L=48)):
        for name in ("out", "dq", "dk", "dv"):
            assert r[name + "_finite"] and r[name] <= 3e-2, (name, r[name])


@pytest.mark.distributed
def test_math_kernel_world4(pool4):
    """The exact matmul block kernel (the non-CPU path) through the 2D ring."""
    for case in (CASES_W4[7], CASES_W4[3]):
        _check(pool4.run("training.sp.testing:case_attention", _cfg(case, "float64", L=32, kernel="math")), "float64")


@pytest.mark.distributed
def test_zigzag_balances_and_skips_blocks(pool4):
    """Per-rank forward work (score entries evaluated): equal with zigzag, skewed with the plain ring."""
    zz = pool4.run("training.sp.testing:case_attention", _cfg((1, 4, "zigzag_ring", 4, 2, None, True), "float64", L=64))
    rg = pool4.run("training.sp.testing:case_attention", _cfg((1, 4, "ring", 4, 2, None, True), "float64", L=64))
    zz_work = [r["work"] for r in zz]
    rg_work = [r["work"] for r in rg]
    assert len(set(zz_work)) == 1
    assert sum(zz_work) == sum(rg_work) == 2 * (64 * 65 // 2)  # the causal triangle of each of the B=2 rows
    assert max(rg_work) > max(zz_work) and min(rg_work) < min(zz_work)
    assert all(r["blocks_skipped"] > 0 for r in zz)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("arch,dtype", [("qwen2", "float64"), ("llama", "float64"), ("qwen2", "float32")])
def test_llm_with_mmsp_matches_single_process(pool2, pool4, world, arch, dtype):
    pool = pool2 if world == 2 else pool4
    U, R = (1, 2) if world == 2 else (2, 2)
    cfg = dict(ulysses=U, ring=R, arch=arch, dtype=dtype, B=2, T=37, overrides={"initializer_range": 0.3})
    tol = 1e-10 if dtype == "float64" else 1e-4
    for r in pool.run("training.sp.testing:case_llm", cfg):
        assert r["mmsp_calls"] >= 2  # every layer went through the mmsp function
        assert r["logits"] <= tol
        assert r["grads"] <= tol
        assert r["control_logits"] > 1e-2  # the check is sensitive: non-causal attention is caught


@pytest.mark.distributed
@pytest.mark.parametrize("world,U,R,mode,segments", [
    (4, 4, 1, "ulysses", None), (4, 1, 4, "zigzag_ring", None), (2, 1, 2, "ring", None),
    (2, 1, 2, "zigzag_ring", "packed_padded"), (4, 2, 2, "2d", "packed_padded"), (4, 4, 1, "ulysses", "packed"),
])
def test_llm_other_modes(pool2, pool4, world, U, R, mode, segments):
    """Also packed rows (documents + padding, position ids restarting per document) through the context."""
    pool = pool2 if world == 2 else pool4
    cfg = dict(ulysses=U, ring=R, mode=mode, arch="qwen2", dtype="float64", B=2, T=30, segments=segments,
               overrides={"initializer_range": 0.3})
    for r in pool.run("training.sp.testing:case_llm", cfg):
        assert r["logits"] <= 1e-10 and r["grads"] <= 1e-10
        assert r["control_logits"] > 1e-2


@pytest.mark.distributed
def test_remote_error_is_reported(pool2):
    """Hq=3 is not divisible by the Ulysses degree 2: every rank raises a clear ValueError (pool restarts)."""
    bad = _cfg((2, 1, "ulysses", 3, 1, None, True), "float64", L=16)
    with pytest.raises(DistributedError, match="must divide the number of query heads"):
        pool2.run("training.sp.testing:case_attention", bad)
    # the pool comes back for the next task
    _check(pool2.run("training.sp.testing:case_attention", _cfg(CASES_W2[0], "float64", L=16)), "float64")
