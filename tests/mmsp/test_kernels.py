"""Fused attention kernels and the document planner: exactly the allowed (query, key) pairs, no leak across
documents, KV-cache steps, kernel selection, and the CUDA adapters' plumbing against CPU emulations of the
ops' documented contracts (the CUDA kernels themselves need a GPU; see README "Long context")."""

from __future__ import annotations

import itertools
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from training import kernels
from training.kernels import block_kernel, get_block_kernel, select_kernel, set_block_kernel
from training.sp import sp_attention
from training.sp.attention import _cached_attention, _merge_adjacent
from training.sp.docs import Chunk, build_schedule, document_runs
from training.sp.layout import ring_chunks
from training.sp.testing import make_segments, reference_attention


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------------------------------ planner
def _allowed(seg: torch.Tensor, causal: bool, q_pos=None) -> set:
    """(b, query position, key position) pairs of the dense definition (test-only, quadratic)."""
    B, L = seg.shape
    q_pos = range(L) if q_pos is None else q_pos
    return {(b, i, j) for b in range(B) for i in q_pos for j in range(L)
            if seg[b, i] >= 0 and seg[b, i] == seg[b, j] and (not causal or j <= i)}


def _planned(seg, q_chunks, chunks, rank, causal, s_q, s_k, B=2) -> tuple[list, int]:
    """Every (b, query position, key position) pair the schedule of ``rank`` computes, with repeats."""
    sched = build_schedule(seg, [Chunk(*c) for c in q_chunks], [[Chunk(*c) for c in cs] for cs in chunks], rank,
                           causal, B, s_q, s_k)
    to_global_q = torch.cat([torch.arange(g, g + n) for _, n, g in q_chunks])
    pairs = []
    for step, calls in enumerate(sched.steps):
        kv = chunks[(rank - step) % len(chunks)]
        to_global_k = torch.cat([torch.arange(g, g + n) for _, n, g in kv])
        for call in calls:
            q_rows, k_rows = call.q_rows.index("cpu"), call.k_rows.index("cpu")
            for qa, qb, ka, kb in call.layout.pieces():
                for i in range(qa, qb):
                    for j in range(ka, kb):
                        if call.layout.causal and j - ka > i - qa:
                            continue
                        bq, lq = divmod(int(q_rows[i]), s_q)
                        bk, lk = divmod(int(k_rows[j]), s_k)
                        assert bq == bk
                        pairs.append((bq, int(to_global_q[lq]), int(to_global_k[lk])))
    return pairs, sched.work


def _segments(kind: str, B: int, L: int) -> torch.Tensor | None:
    gen = torch.Generator().manual_seed(L)
    if kind == "split_runs":  # one document in two runs (a hole of padding and another document between)
        seg = torch.zeros(B, L, dtype=torch.long)
        seg[:, L // 4: L // 2] = 1
        seg[:, L // 2: L // 2 + 3] = -1
        seg[:, -2:] = -1
        return seg
    return make_segments(B, L, kind, gen)


@pytest.mark.parametrize("kind", [None, "packed", "packed_padded", "split_runs"])
@pytest.mark.parametrize("R,scheme", [(1, "zigzag"), (2, "zigzag"), (4, "zigzag"), (3, "contiguous")])
@pytest.mark.parametrize("causal", [True, False])
def test_plan_covers_exactly_the_allowed_pairs(kind, R, scheme, causal):
    """Union over ring ranks and steps of the planned pieces == the dense mask's True entries, each once; the
    work statistic counts exactly them (the negative space -- other documents, padding, the future -- is
    never computed)."""
    B, L = 2, 48
    seg = _segments(kind, B, L)
    seg_or_zero = torch.zeros(B, L, dtype=torch.long) if seg is None else seg
    chunks = [_merge_adjacent(ring_chunks(L, R, j, scheme)) for j in range(R)]
    pairs, work = [], 0
    for r in range(R):
        p, w = _planned(seg, chunks[r], chunks, r, causal, L // R, L // R)
        pairs += p
        work += w
    assert len(pairs) == len(set(pairs)) == work
    assert set(pairs) == _allowed(seg_or_zero, causal)


def test_plan_of_a_kv_cache_step():
    """Queries = the last 5 of 29 key positions (bottom-right causal), a padding hole in the keys."""
    seg = torch.zeros(2, 29, dtype=torch.long)
    seg[0, :4] = -1  # left padding
    seg[1, 10:13] = -1  # a hole
    pairs, work = _planned(seg, [(0, 5, 24)], [[(0, 29, 0)]], 0, True, 5, 29)
    assert len(pairs) == len(set(pairs)) == work
    assert set(pairs) == _allowed(seg, True, q_pos=range(24, 29))


def test_document_runs():
    seg = torch.tensor([[0, 0, 1, 1, 0, -1, -1, 2], [-1, -1, -1, -1, -1, -1, -1, -1]])
    assert document_runs(seg, 2, 8) == [[(0, 2, 0), (2, 4, 1), (4, 5, 0), (7, 8, 2)], []]
    assert document_runs(None, 2, 8) == [[(0, 8, 0)], [(0, 8, 0)]]
    with pytest.raises(ValueError, match="segment ids of shape"):
        document_runs(seg, 2, 9)


# ------------------------------------------------------------------------------------------ fused path
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5), ("bfloat16", 3e-2)])
def test_document_runs_of_one_id_see_each_other(dtype, tol):
    """Non-contiguous runs of one id + padding, GQA, B=2: fused output and gradients == dense reference."""
    gen = torch.Generator().manual_seed(4)
    B, Hq, Hkv, S, D = 2, 4, 2, 40, 16
    seg = _segments("split_runs", B, S)
    q, k, v, dout = (torch.randn(B, h, S, D, generator=gen, dtype=torch.float64) for h in (Hq, Hkv, Hkv, Hq))
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    reference_attention(qr, kr, vr, causal=True, segment_ids=seg).backward(dout)
    dt = getattr(torch, dtype)
    ql, kl, vl = (t.to(dt).requires_grad_() for t in (q, k, v))
    out = sp_attention(ql, kl, vl, groups=None, segment_ids=seg)
    out.backward(dout.to(dt))
    ref = reference_attention(q, k, v, causal=True, segment_ids=seg)
    for got, want in ((out, ref), (ql.grad, qr.grad), (kl.grad, kr.grad), (vl.grad, vr.grad)):
        assert rel(got, want) <= tol
    assert out.detach()[(seg < 0)[:, None, :, None].expand_as(out)].abs().max() == 0  # padding rows: exactly 0


def test_no_attention_leaks_across_documents():
    """Negative control: changing document 0's keys/values leaves every other document's output bit-identical
    and their loss has exactly zero gradient w.r.t. document 0; without segment ids the change leaks."""
    gen = torch.Generator().manual_seed(5)
    S, D = 64, 16
    seg = torch.tensor([[0] * 20 + [1] * 30 + [2] * 14])
    q, k, v = (torch.randn(1, 2, S, D, generator=gen) for _ in range(3))
    k2, v2 = k.clone(), v.clone()
    k2[:, :, :20] += 3.0
    v2[:, :, :20] -= 2.0
    a = sp_attention(q, k, v, groups=None, segment_ids=seg)
    b = sp_attention(q, k2, v2, groups=None, segment_ids=seg)
    assert torch.equal(a[:, :, 20:], b[:, :, 20:]) and not torch.equal(a[:, :, :20], b[:, :, :20])
    kg, vg = k.clone().requires_grad_(), v.clone().requires_grad_()
    sp_attention(q, kg, vg, groups=None, segment_ids=seg)[:, :, 20:].sum().backward()
    assert kg.grad[:, :, :20].abs().max() == 0 and vg.grad[:, :, :20].abs().max() == 0
    assert kg.grad[:, :, 20:].abs().max() > 0
    plain_a = sp_attention(q, k, v, groups=None)
    plain_b = sp_attention(q, k2, v2, groups=None)
    assert not torch.equal(plain_a[:, :, 20:], plain_b[:, :, 20:])


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_kv_cache_step_matches_the_reference(dtype, tol):
    """A decode/extend step (3 new queries over 23 cached + new keys, a padding hole in the 2-D mask)."""
    gen = torch.Generator().manual_seed(6)
    B, Hq, Hkv, Sk, Sq, D = 2, 4, 1, 26, 3, 8
    q_all, k, v = (torch.randn(B, h, Sk, D, generator=gen, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    mask = torch.ones(B, Sk, dtype=torch.long)
    mask[0, :5] = 0
    mask[1, 7:9] = 0
    ref = reference_attention(q_all, k, v, causal=True, segment_ids=torch.where(mask.bool(), 0, -1))[:, :, -Sq:]
    dt = getattr(torch, dtype)
    got = _cached_attention(q_all[:, :, -Sq:].to(dt), k.to(dt), v.to(dt), mask, 1 / math.sqrt(D), True)
    assert got.shape == (B, Sq, Hq, D)
    assert rel(got.transpose(1, 2), ref) <= tol


def test_meta_tensors_give_shapes_only():
    q = torch.empty(1, 4, 16, 8, device="meta")
    assert sp_attention(q, q[:, :2], q[:, :2], groups=None).shape == q.shape


# ------------------------------------------------------------------------------------------ selection
def test_kernel_selection_override_and_errors(monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    assert get_block_kernel() == "auto" and select_kernel(cpu, torch.float32, 64).name == "cpu_flash"
    monkeypatch.setenv(kernels.KERNEL_ENV, "math")
    assert select_kernel(cpu, torch.float32, 64).name == "math"
    with block_kernel("cpu_flash"):  # the API override wins over the environment
        assert select_kernel(cpu, torch.float32, 64).name == "cpu_flash"
    monkeypatch.setenv(kernels.KERNEL_ENV, "nonsense")
    with pytest.raises(ValueError, match="unknown attention kernel 'nonsense'"):
        select_kernel(cpu, torch.float32, 64)
    monkeypatch.delenv(kernels.KERNEL_ENV)
    for name in ("sdpa_flash", "flash_attn", "sdpa_cudnn", "sdpa_efficient"):
        with block_kernel(name), pytest.raises(ValueError, match=f"{name}: runs on CUDA only"):
            select_kernel(cpu, torch.bfloat16, 128)
    with pytest.raises(ValueError, match="no fused attention kernel for device type 'meta'"):
        select_kernel(torch.device("meta"), torch.float32, 64)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        set_block_kernel("flash")
    monkeypatch.setattr(kernels, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="training.kernels"):
        for _ in range(3):
            select_kernel(cpu, torch.float64, 8)
    assert sum("attention kernel cpu_flash" in r.message for r in caplog.records) == 1  # logged once


# ------------------------------------------------------------------------------------------ CUDA adapters
def _dense(q, k, v, causal, scale, heads_first_kv=False):
    """Emulated kernel math for one sequence: q [n, H, D], k/v [m, Hk, D] (or [1, Hk, m, D] with
    ``heads_first_kv``) -> out [n, H, D], lse [H, n] (float64 inside; causal aligned to the bottom-right corner
    as flash-attn does)."""
    if heads_first_kv:
        k, v = k[0].transpose(0, 1), v[0].transpose(0, 1)
    rep = q.shape[1] // k.shape[1]
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double().repeat_interleave(rep, 1)) * scale
    if causal:
        n, m = s.shape[1:]
        s = s.masked_fill(~torch.ones(n, m, dtype=torch.bool).tril(m - n), float("-inf"))
    out = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v.double().repeat_interleave(rep, 1))
    return out.to(q.dtype), torch.logsumexp(s, -1).float()


def _dense_grads(dout, q, k, v, causal, scale):
    with torch.enable_grad():
        qg, kg, vg = (t.detach().double().requires_grad_() for t in (q, k, v))
        out, _ = _dense(qg, kg, vg, causal, scale)
        out.backward(dout.double())
    return qg.grad.to(q.dtype), kg.grad.to(k.dtype), vg.grad.to(v.dtype)


def _varlen(fn, q, k, v, cu_q, cu_k, max_q, max_k, *rest):
    assert cu_q.dtype == cu_k.dtype == torch.int32 and q.dim() == 3 and k.dim() == 3
    assert max_q == int((cu_q[1:] - cu_q[:-1]).max()) and max_k == int((cu_k[1:] - cu_k[:-1]).max())
    parts = []
    for i in range(cu_q.numel() - 1):
        a, b, c, d = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        parts.append((slice(a, b), slice(c, d), fn(q[a:b], k[c:d], v[c:d], *rest)))
    return parts


def fake_aten_flash_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, return_debug_mask, *, scale):
    out, lse = torch.empty_like(q), torch.empty(q.shape[1], q.shape[0])
    for qs, _, (o, l_) in _varlen(lambda *a: _dense(*a), q, k, v, cu_q, cu_k, max_q, max_k, is_causal, scale):
        out[qs], lse[:, qs] = o, l_
    return out, lse, torch.zeros(2, dtype=torch.uint64), torch.empty(0), torch.empty(0)


def fake_aten_flash_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, rng_state,
                             unused, *, scale):
    assert lse.shape == (q.shape[1], q.shape[0]) and lse.is_contiguous() and lse.dtype == torch.float32
    torch.testing.assert_close(lse, fake_aten_flash_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, is_causal,
                                                            False, scale=scale)[1])
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    for i in range(cu_q.numel() - 1):
        a, b, c, d = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        dq[a:b], dk[c:d], dv[c:d] = _dense_grads(dout[a:b], q[a:b], k[c:d], v[c:d], is_causal, scale)
    return dq, dk, dv


def fake_flash_attn_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, *,
                            window_size_left, window_size_right, softcap, alibi_slopes, return_softmax):
    assert (window_size_left, window_size_right, softcap, alibi_slopes, return_softmax) == (-1, -1, 0.0, None, False)
    out, lse, _, _, _ = fake_aten_flash_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, causal, False,
                                                scale=softmax_scale)
    return out, lse, torch.empty(0), torch.zeros(2, dtype=torch.int64)


def fake_flash_attn_backward(dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, max_q, max_k, dropout_p,
                             softmax_scale, causal, wl, wr, softcap, alibi, deterministic, rng_state):
    g = fake_aten_flash_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, causal, rng_state,
                                 None, scale=softmax_scale)
    for buf, val in zip((dq, dk, dv), g):
        buf.copy_(val)
    return torch.empty(0)


def fake_efficient_forward(q4, k4, v4, attn_bias, compute_log_sumexp, dropout_p, is_causal, *, scale):
    assert attn_bias is None and compute_log_sumexp and q4.shape[1] == k4.shape[1]  # equal heads required
    out, lse = _dense(q4[0].transpose(0, 1), k4[0].transpose(0, 1), v4[0].transpose(0, 1), is_causal, scale)
    n = q4.shape[2]
    padded = torch.full((1, q4.shape[1], -(-n // 32) * 32), float("nan"))
    padded[0, :, :n] = lse
    return out.transpose(0, 1)[None], padded, torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.int64)


def fake_efficient_backward(do4, q4, k4, v4, attn_bias, o4, lse, seed, offset, dropout_p, grad_input_mask,
                            is_causal, *, scale):
    assert lse.shape[-1] % 32 == 0 and list(grad_input_mask) == [True, True, True, False]
    t = (x[0].transpose(0, 1) for x in (do4, q4, k4, v4))
    return (*(g.transpose(0, 1)[None] for g in _dense_grads(*t, is_causal, scale)), None)


def fake_cudnn_forward(q4, k4, v4, attn_bias, compute_log_sumexp, dropout_p, is_causal, return_debug_mask, *,
                       scale):
    assert attn_bias is None and compute_log_sumexp and not return_debug_mask
    out, lse = _dense(q4[0].transpose(0, 1), k4, v4, is_causal, scale, heads_first_kv=True)
    n = q4.shape[2]
    seed = offset = torch.zeros((), dtype=torch.int64)
    return out.transpose(0, 1)[None], lse[None, :, :, None], None, None, n, k4.shape[2], seed, offset, None


def fake_cudnn_backward(do4, q4, k4, v4, o4, lse4, seed, offset, attn_bias, cum_q, cum_k, max_q, max_k,
                        dropout_p, is_causal, *, scale):
    assert lse4.shape == (1, q4.shape[1], q4.shape[2], 1) and (max_q, max_k) == (q4.shape[2], k4.shape[2])
    assert do4.stride() == o4.stride(), "cuDNN's backward gets dO and O in one memory layout"
    t = (x[0].transpose(0, 1) for x in (do4, q4, k4, v4))
    return tuple(g.transpose(0, 1)[None] for g in _dense_grads(*t, is_causal, scale))


@pytest.mark.parametrize("name,max_pieces", [("sdpa_flash", None), ("flash_attn", None), ("sdpa_efficient", None),
                                             ("sdpa_cudnn", 16), ("sdpa_cudnn", 1)])
def test_cuda_adapters_against_emulated_ops(monkeypatch, name, max_pieces):
    """The plumbing of each CUDA kernel (cu_seqlens, LSE layouts and padding, argument order, GQA, gradient
    buffers) through sp_attention, with the aten / flash-attn ops replaced by CPU emulations of their
    contracts; the result must equal the dense reference. What this cannot check: the ops themselves."""
    fake_ops = SimpleNamespace(_flash_attention_forward=fake_aten_flash_forward,
                               _flash_attention_backward=fake_aten_flash_backward,
                               _scaled_dot_product_efficient_attention=fake_efficient_forward,
                               _scaled_dot_product_efficient_attention_backward=fake_efficient_backward,
                               _scaled_dot_product_cudnn_attention=fake_cudnn_forward,
                               _scaled_dot_product_cudnn_attention_backward=fake_cudnn_backward)
    monkeypatch.setattr(kernels, "aten", fake_ops)
    if max_pieces is not None:  # 1: every packed call goes to the flash varlen path, as many documents do
        monkeypatch.setattr(kernels.SdpaCudnnKernel, "max_pieces", max_pieces)
        monkeypatch.setattr(kernels.SdpaCudnnKernel, "min_mean_piece", 1)  # these pieces are tiny: keep cuDNN
    monkeypatch.setattr(kernels, "_flash_attn_ops",
                        lambda: ((fake_flash_attn_forward, fake_flash_attn_backward), None))
    monkeypatch.setattr(type(kernels._KERNELS[name]), "unsupported", lambda self, *a: None)
    gen = torch.Generator().manual_seed(7)
    B, Hq, Hkv, S, D = 2, 4, 2, 40, 8
    seg = make_segments(B, S, "packed_padded", gen)
    q, k, v, dout = (torch.randn(B, h, S, D, generator=gen) for h in (Hq, Hkv, Hkv, Hq))
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qr, kr, vr, causal=True, segment_ids=seg)
    ref.backward(dout.double())
    ql, kl, vl = (t.clone().requires_grad_() for t in (q, k, v))
    with block_kernel(name):
        out = sp_attention(ql, kl, vl, groups=None, segment_ids=seg)
        out.backward(dout)
    for got, want in ((out, ref), (ql.grad, qr.grad), (kl.grad, kr.grad), (vl.grad, vr.grad)):
        assert rel(got, want) <= 1e-5


def test_cudnn_kernel_hands_short_or_many_pieces_to_flash_varlen():
    """cuDNN is launch-bound on short pieces (measured on the H100: 1-2k-token documents took 1.3-1.8x the flash
    varlen kernel's time), so it keeps only calls of <= 16 pieces averaging >= 4,096 tokens."""
    cudnn = kernels._KERNELS["sdpa_cudnn"]

    def layout(*lengths):
        offsets = (0, *itertools.accumulate(lengths))
        return kernels.VarlenLayout(True, offsets, offsets)

    assert not cudnn._delegates(layout(32768))
    assert not cudnn._delegates(layout(*[8192] * 8))
    assert cudnn._delegates(layout(*[2048] * 4))
    assert cudnn._delegates(layout(*[8192] * 17))
