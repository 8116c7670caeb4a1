"""Chunked LM-head cross-entropy and token log-probs: exact against full-logits math (forward, gradients of the
hidden states and of the LM-head weight), in float64 / float32 / bfloat16, at chunk boundaries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.loss import linear_cross_entropy, token_logprobs


def _data(dtype, n=61, hidden=24, vocab=131, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=gen, dtype=torch.float64).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[::4] = -100
    return h, w, labels


def _reference(h, w, labels):
    logits = h @ w.t()
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("chunk_rows", [1, 7, 45, None])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_linear_cross_entropy_is_exact(dtype, tol, chunk_rows):
    h, w, labels = _data(dtype)
    hr, wr = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = _reference(hr, wr, labels)
    (ref * 3.0).backward()  # a non-unit upstream gradient
    hc, wc = h.clone().requires_grad_(), w.clone().requires_grad_()
    got = linear_cross_entropy(hc, wc, labels, chunk_rows=chunk_rows)
    (got * 3.0).backward()
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert abs(float(got.detach()) - float(ref.detach())) <= tol * abs(float(ref.detach()))
    for a, b in ((hc.grad, hr.grad), (wc.grad, wr.grad)):
        assert a.dtype == b.dtype
        assert float((a.double() - b.double()).abs().max()) <= tol * float(b.double().abs().max())
    assert hc.grad[labels == -100].abs().max() == 0  # unsupervised rows get no gradient


def test_edge_cases():
    h, w, labels = _data(torch.float64)
    none = torch.full_like(labels, -100)
    hc = h.clone().requires_grad_()
    loss = linear_cross_entropy(hc, w, none)
    loss.backward()
    assert float(loss.detach()) == 0.0 and hc.grad.abs().max() == 0
    bad = labels.clone()
    bad[1] = w.shape[0]
    with pytest.raises(ValueError, match="target token ids must lie in"):
        linear_cross_entropy(h, w, bad)
    with pytest.raises(ValueError, match="hidden size"):
        linear_cross_entropy(h[:, :5], w, labels)
    every = labels.clamp_min(0)  # all rows supervised (no gathered copy) and a graph run backward twice
    hc, hr = h.clone().requires_grad_(), h.clone().requires_grad_()
    loss = linear_cross_entropy(hc, w, every, chunk_rows=10)
    loss.backward(retain_graph=True)
    loss.backward()
    _reference(hr, w, every).backward()
    assert torch.allclose(hc.grad, 2 * hr.grad, rtol=1e-12, atol=1e-14)
    with torch.no_grad():  # forward only: no gradient buffers, same value
        assert float(linear_cross_entropy(h, w, labels)) == pytest.approx(float(_reference(h, w, labels)), rel=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_token_logprobs_is_exact(dtype, tol):
    h, w, labels = _data(dtype)
    targets = labels.clamp_min(0)
    ref = torch.log_softmax((h @ w.t()).double(), -1).gather(1, targets[:, None]).squeeze(1)
    got = token_logprobs(h, w, targets, chunk_rows=9)
    assert float((got.double() - ref).abs().max()) <= tol * float(ref.abs().max())
