"""Cross-entropy and per-token log-probabilities over an LM head without [tokens, vocab] logits.

``linear_cross_entropy(hidden [N, H], weight [V, H], labels [N])`` returns the SUM of the token losses
``logsumexp(h W^T) - (h W^T)[label]`` over the rows whose label is not ``ignore_index`` -- exactly what
``F.cross_entropy(hidden @ weight.T, labels, reduction="sum")`` computes after upcasting the logits (float32,
float64 for float64 weights) -- and its exact gradients w.r.t. ``hidden`` and ``weight``. Only supervised
rows are processed (a video prompt is mostly unsupervised visual tokens), ``chunk_rows`` at a time: a
chunk's logits are turned into their gradient in place and multiplied out at once (fused forward +
backward, like Liger's fused linear cross-entropy), so the peak extra memory is one chunk of logits plus a
float32 accumulator for the weight gradient, whatever the sequence length.

``token_logprobs(hidden, weight, targets)`` gives ``log p(target)`` per row the same way (evaluation;
no autograd).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
CHUNK_BYTES = 1 << 28  # float32 logits per chunk: 256 MiB


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def _check_targets(targets: torch.Tensor, vocab: int) -> None:
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(f"target token ids must lie in [0, {vocab}) (or be the ignore index); got "
                         f"{int(targets.min())}..{int(targets.max())}")


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Turn a [c, V] chunk of logits into its softmax in place; returns the log-sum-exp [c] (no temporaries of
    the chunk's size)."""
    peak = logits.max(dim=-1).values
    total = logits.sub_(peak[:, None]).exp_().sum(dim=-1)
    logits.div_(total[:, None])
    return peak + total.log()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index: int, chunk_rows: int):
        rows = (labels != ignore_index).nonzero().squeeze(1)
        every = rows.numel() == labels.numel()  # all rows supervised: no gathered copy
        h, t = (hidden, labels) if every else (hidden.index_select(0, rows), labels.index_select(0, rows))
        _check_targets(t, weight.shape[0])
        acc = _acc(weight.dtype)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=acc, device=weight.device)
        for start in range(0, h.shape[0], chunk_rows):
            hc, tc = h[start:start + chunk_rows], t[start:start + chunk_rows]
            logits = (hc @ weight.t()).to(acc)
            picked = logits.gather(1, tc[:, None]).squeeze(1)
            lse = _softmax_(logits)
            total += (lse - picked).sum()
            logits[torch.arange(tc.numel(), device=logits.device), tc] -= 1.0  # d loss / d logits
            g = logits.to(weight.dtype)
            if want_h:
                grad_h[start:start + chunk_rows] = g @ weight
            if want_w:
                _accumulate(grad_w, g.t(), hc)
            del logits, g  # before the next chunk is allocated
        ctx.save_for_backward(rows, grad_h, grad_w)
        ctx.hidden_shape, ctx.hidden_dtype, ctx.weight_dtype = hidden.shape, hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        rows, grad_h, grad_w = ctx.saved_tensors
        dh = dw = None
        scale = float(grad_out)  # usually 1: the precomputed gradients are returned without a copy

        def scaled(g, dtype):
            return (g if scale == 1.0 else g * scale).to(dtype)

        if ctx.needs_input_grad[0]:
            part = scaled(grad_h, ctx.hidden_dtype)
            if rows.numel() == ctx.hidden_shape[0]:
                dh = part
            else:
                dh = torch.zeros(ctx.hidden_shape, dtype=ctx.hidden_dtype, device=rows.device)
                dh.index_copy_(0, rows, part)
        if ctx.needs_input_grad[1]:
            dw = scaled(grad_w, ctx.weight_dtype)
        return dh, dw, None, None, None


def _accumulate(grad_w: torch.Tensor, g_t: torch.Tensor, h: torch.Tensor) -> None:
    """grad_w (float32/64) += g_t @ h, in one GEMM when the dtypes agree."""
    if g_t.dtype == grad_w.dtype and h.dtype == grad_w.dtype:
        grad_w.addmm_(g_t, h)
    else:
        grad_w += g_t @ h.to(g_t.dtype)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         ignore_index: int = IGNORE_INDEX, chunk_rows: int | None = None) -> torch.Tensor:
    """Sum of next-token losses of ``hidden`` [N, H] under the LM head ``weight`` [V, H] (module doc).

    ``labels`` [N] are the targets already aligned with the rows (shifted); ``ignore_index`` rows do not
    count. Returns a 0-d float32 (float64 for float64 weights) tensor, differentiable w.r.t. hidden and
    weight."""
    if hidden.dim() != 2 or weight.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden [N, H], weight [V, H], labels [N]; got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(labels.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden size {hidden.shape[1]} != LM head input size {weight.shape[1]}")
    rows = chunk_rows or default_chunk_rows(weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, labels.to(hidden.device), ignore_index, rows)


@torch.no_grad()
def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                   chunk_rows: int | None = None) -> torch.Tensor:
    """``log softmax(hidden @ weight.T)[row, targets[row]]`` for every row of ``hidden`` [N, H]: [N] float32
    (float64 for float64 weights), without [N, V] logits. No autograd."""
    targets = targets.to(hidden.device)
    _check_targets(targets, weight.shape[0])
    out = torch.empty(hidden.shape[0], dtype=_acc(weight.dtype), device=hidden.device)
    rows = chunk_rows or default_chunk_rows(weight.shape[0])
    for start in range(0, hidden.shape[0], rows):
        logits = (hidden[start:start + rows] @ weight.t()).to(out.dtype)
        picked = logits.gather(1, targets[start:start + rows, None]).squeeze(1)
        out[start:start + rows] = picked - _softmax_(logits)
        del logits
    return out


__all__ = ["IGNORE_INDEX", "default_chunk_rows", "linear_cross_entropy", "token_logprobs"]
