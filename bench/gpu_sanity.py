"""Correctness of the fused attention kernels on the device at hand, before any timing (one short run).

For every block kernel of :mod:`training.kernels` that can run the inputs on this device, ``sp_attention`` in
one process (the block path every ring step runs) is compared with the dense float32 reference of
:mod:`training.sp.testing` on the same bf16 (and float32) inputs: output and dq / dk / dv, causal, plain rows
and rows packed with 4 documents plus padding, Qwen2-7B head shape (28 query / 4 KV heads x 128). Stock SDPA's
error against the same reference is printed beside it: a fused kernel should be as close as SDPA is. Prints one
table and exits non-zero if any kernel's error exceeds ``--tolerance`` times SDPA's (or a float32 bound).

    python bench/gpu_sanity.py [--tokens 2048]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.kernels import block_kernel, kernel_names, select_kernel  # noqa: E402
from training.sp import sp_attention  # noqa: E402
from training.sp.testing import reference_attention  # noqa: E402

HEADS = (28, 4, 128)


def _inputs(tokens: int, dtype: torch.dtype, device, docs: int):
    gen = torch.Generator(device=device).manual_seed(0)
    hq, hkv, dim = HEADS
    q, k, v = (torch.randn(1, h, tokens, dim, generator=gen, device=device, dtype=dtype) for h in (hq, hkv, hkv))
    dout = torch.randn(1, hq, tokens, dim, generator=gen, device=device, dtype=dtype)
    seg = None
    if docs > 1:
        seg = torch.arange(docs, device=device).repeat_interleave(tokens // docs)[None].clone()
        seg[0, -tokens // 16:] = -1  # trailing padding
    return q, k, v, dout, seg


def _grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return [out.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()]


def _sdpa(seg):
    def fn(q, k, v):
        if seg is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        keep = (seg[:, :, None] == seg[:, None, :]) & (seg >= 0)[:, :, None]
        keep = keep & torch.ones_like(keep[0]).tril()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None], enable_gqa=True)
        return out.masked_fill((seg < 0)[:, None, :, None], 0.0)
    return fn


def _errors(got, ref) -> list[float]:
    return [float((g - r).abs().max()) for g, r in zip(got, ref)]


def check(tokens: int, dtype: torch.dtype, docs: int, device) -> list[tuple[str, list[float]]]:
    q, k, v, dout, seg = _inputs(tokens, dtype, device, docs)
    ref = _grads(lambda a, b, c: reference_attention(a, b, c, causal=True, segment_ids=seg),
                 *(t.float() for t in (q, k, v, dout)))
    rows = [("sdpa (stock)", _errors(_grads(_sdpa(seg), q, k, v, dout), ref))]
    for name in kernel_names():
        if name == "math" or not runs_here(name, device, dtype):
            continue
        with block_kernel(name):
            got = _grads(lambda a, b, c: sp_attention(a, b, c, groups=None, segment_ids=seg), q, k, v, dout)
        rows.append((name, _errors(got, ref)))
    return rows


def runs_here(name: str, device, dtype) -> bool:
    with block_kernel(name):
        try:
            select_kernel(device, dtype, HEADS[2])
        except ValueError:
            return False
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--tolerance", type=float, default=4.0, help="allowed multiple of SDPA's error (bf16)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}; torch {torch.__version__}; auto kernel bf16: "
          f"{select_kernel(device, torch.bfloat16, HEADS[2]).name}")
    print("| dtype | docs | kernel | out | dq | dk | dv |\n|---|---|---|---|---|---|---|")
    failed = False
    for dtype in (torch.bfloat16, torch.float32):
        for docs in (1, 4):
            rows = check(args.tokens, dtype, docs, device)
            sdpa = rows[0][1]
            for name, errs in rows:
                bound = [max(args.tolerance * s, 1e-3) for s in sdpa] if dtype == torch.bfloat16 else [1e-3] * 4
                bad = name != "sdpa (stock)" and any(e > b for e, b in zip(errs, bound))
                failed |= bad
                cells = " | ".join(f"{e:.2e}" for e in errs)
                print(f"| {str(dtype)[6:]} | {docs} | {name}{' FAIL' if bad else ''} | {cells} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
