"""Long-context benchmark (issue 9): the tables of the shared gpu.md reference, for the device it runs on.

1. Attention forward + backward: the project's ``sp_attention`` in one process (the same block kernels every
   ring step runs; the kernel :mod:`training.kernels` picks is named in the output) against torch SDPA, forced
   to its flash backend on CUDA and with the backend torch picks itself (cuDNN on an H100), causal, batch 1,
   plain rows and rows packed with 4 and 8 equal documents (SDPA runs each document separately: what a packed
   batch costs with stock kernels). Time (median), TFLOP/s (flash-attn's convention: 4·s²·heads·dim/2 per
   causal document forward, backward 2.5x) and peak memory.
2. One training step (forward + backward, no optimizer) of the longvila-1.5b-qwen2 LLM, bf16, gradient
   checkpointing per decoder layer, every token supervised: the project (LongVILA model API: project
   attention, chunked fused loss) against the anchor (stock transformers Qwen2 + SDPA + gradient
   checkpointing + a checkpointed chunked cross-entropy). The VLM's vision tower is a 1-layer stub: the step
   is text-only and never calls it, so both sides hold the same LLM.
3. The longest sequence whose training step fits: doubling from the largest measured size until an
   out-of-memory error, within a wall-clock budget (sizes whose projected time exceeds it are not tried).

GPU plan: Qwen2-7B head shape (28 query / 4 KV heads x 128) at 4k-128k tokens; steps at 16k-128k; designed to
finish in under 6 minutes on one H100 (``--budget-s``). CPU plan: 4 query / 2 KV heads x 64 at 1k-8k tokens, a
2-layer model at 1k-4k tokens, float32, peak RSS growth instead of CUDA peak allocation; no fit search.
Without flash-attn the project runs torch's bundled flash kernel (named in the header). Run::

    python bench/long_context.py --out bench/results/long_context.md
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.kernels import select_kernel  # noqa: E402
from training.sp import sp_attention  # noqa: E402

GIB = float(1 << 30)


@dataclass
class Plan:
    dtype: torch.dtype
    heads: tuple[int, int, int]  # query heads, KV heads, head dim
    attn_sizes: list[int]
    step_sizes: list[int]
    text: dict  # overrides of the profile's LLM config (CPU: a small model)
    fit_search: bool
    reps: int


GPU = Plan(torch.bfloat16, (28, 4, 128), [4096, 8192, 16384, 32768, 65536, 131072], [16384, 32768, 65536, 131072],
           {}, True, 3)
CPU = Plan(torch.float32, (4, 2, 64), [2048, 4096, 8192], [1024, 2048, 4096],
           dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2), False, 2)
STUB_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


# ------------------------------------------------------------------------------------------ measuring
class Meter:
    """Time and peak memory of one call on a device: CUDA peak allocation (inputs included), or on CPU the
    growth of the process's peak RSS (reset through /proc/self/clear_refs)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.unit, self.scale = ("GiB", GIB) if device.type == "cuda" else ("MiB", float(1 << 20))

    def __call__(self, fn: Callable[[], object]) -> tuple[float, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return time.perf_counter() - t0, torch.cuda.max_memory_allocated() / self.scale
        from training.sp.testing import rss_peak_growth

        t0 = time.perf_counter()
        growth, _ = rss_peak_growth(fn)
        return time.perf_counter() - t0, growth / self.scale

    def repeat(self, fn: Callable[[], object], reps: int) -> tuple[float, float] | None:
        """(median seconds, max peak GiB) over ``reps`` calls; None when the device ran out of memory."""
        runs = []
        for _ in range(reps):
            try:
                runs.append(self(fn))
            except torch.OutOfMemoryError:
                release()
                return None
            release()
        return statistics.median(t for t, _ in runs), max(m for _, m in runs)


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def attention_flops(tokens: int, docs: int, heads: int, dim: int) -> float:
    """Forward + backward FLOPs of causal attention over ``docs`` equal documents (flash-attn's convention)."""
    per_doc = tokens // docs
    return 3.5 * docs * 4 * per_doc * per_doc * heads * dim / 2


# ------------------------------------------------------------------------------------------ 1. attention
def _qkv(tokens: int, plan: Plan, device):
    hq, hkv, dim = plan.heads
    gen = torch.Generator(device=device).manual_seed(0)

    def make(h):  # transformers' memory layout: [B, S, H, D] seen as [B, H, S, D]
        t = torch.randn(1, tokens, h, dim, generator=gen, device=device, dtype=plan.dtype)
        return t.transpose(1, 2).requires_grad_()

    return make(hq), make(hkv), make(hkv), torch.randn(1, hq, tokens, dim, device=device, dtype=plan.dtype)


def project_attention(q, k, v, dout, docs: int):
    seg = None
    if docs > 1:
        seg = torch.arange(docs, device=q.device).repeat_interleave(q.shape[2] // docs)[None]
    sp_attention(q, k, v, groups=None, segment_ids=seg).backward(dout)


SDPA_NOTES: set = set()


def sdpa_attention(q, k, v, dout, docs: int):
    """Stock SDPA, one call per document (flash backend on CUDA); K/V heads expanded if the backend refuses
    grouped-query attention (noted in the output)."""
    n = q.shape[2] // docs
    try:
        outs = [F.scaled_dot_product_attention(q[:, :, i:i + n], k[:, :, i:i + n], v[:, :, i:i + n],
                                               is_causal=True, enable_gqa=True) for i in range(0, q.shape[2], n)]
    except torch.OutOfMemoryError:
        raise
    except RuntimeError:
        SDPA_NOTES.add("SDPA refused enable_gqa: K/V heads expanded inside the measured call")
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        outs = [F.scaled_dot_product_attention(q[:, :, i:i + n], k[:, :, i:i + n], v[:, :, i:i + n], is_causal=True)
                for i in range(0, q.shape[2], n)]
    torch.cat(outs, dim=2).backward(dout)


def _sdpa_backend(device) -> tuple[Callable, str]:
    """(context-manager factory, name) of the SDPA backend the anchor runs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type == "cuda" and torch.backends.cuda.is_flash_attention_available():
        return (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)), "flash"
    return contextlib.nullcontext, "default"


def _attention_case(tokens: int, docs: int, plan: Plan, meter: Meter, sdpa_ctx: Callable):
    """(SDPA forced to its flash backend, SDPA with the backend torch picks, project) on the same inputs
    (gradients reset before every call). On an H100 torch picks cuDNN, which stock transformers then runs."""
    q, k, v, dout = _qkv(tokens, plan, meter.device)
    reps = plan.reps if tokens <= 32768 else 1

    def call(fn):
        def run():
            q.grad = k.grad = v.grad = None
            fn(q, k, v, dout, docs)
        return run

    with sdpa_ctx():
        flash = meter.repeat(call(sdpa_attention), reps)
    default = meter.repeat(call(sdpa_attention), reps)
    return flash, default, meter.repeat(call(project_attention), reps)


def attention_table(plan: Plan, meter: Meter) -> list[str]:
    hq, hkv, dim = plan.heads
    sdpa_ctx, backend = _sdpa_backend(meter.device)
    u = meter.unit
    rows = [f"### Attention forward + backward ({hq} query / {hkv} KV heads x {dim}, {str(plan.dtype)[6:]}, "
            f"causal, batch 1; SDPA forced to backend: {backend}, and SDPA with torch's own choice)", "",
            f"| tokens | docs | SDPA {backend} ms | TFLOP/s | {u} | SDPA default ms | TFLOP/s | {u} | project ms "
            f"| TFLOP/s | {u} | project / SDPA {backend} TFLOP/s | project / SDPA default TFLOP/s | memory ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for tokens in plan.attn_sizes:
        for docs in (1, 4, 8):
            flash, default, got = _attention_case(tokens, docs, plan, meter, sdpa_ctx)
            release()
            rows.append(_attention_row(tokens, docs, flash, default, got, attention_flops(tokens, docs, hq, dim)))
            print(rows[-1], flush=True)
    return rows + [""] + [f"Note: {n}." for n in sorted(SDPA_NOTES)] + [""]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 1e-3 else "-"


def _attention_row(tokens, docs, flash, default, got, flops) -> str:
    def cells(r):
        return ["OOM"] * 3 if r is None else [f"{r[0] * 1e3:.1f}", f"{flops / r[0] / 1e12:.3g}", f"{r[1]:.2f}"]

    def speed(ref):
        return "-" if ref is None or got is None else _ratio(ref[0], got[0])

    mem = "-" if flash is None or got is None else _ratio(got[1], flash[1])
    return "| " + " | ".join([f"{tokens:,}", str(docs), *cells(flash), *cells(default), *cells(got), speed(flash),
                              speed(default), mem]) + " |"


# ------------------------------------------------------------------------------------------ 2. training step
def build_project(plan: Plan, device):
    """The LongVILA 1.5B profile's model (its LLM exactly; vision tower stubbed), project attention and loss."""
    from training.model.profiles import build_model, get_profile

    cfg = get_profile("longvila-1.5b-qwen2").config(text=dict(plan.text), vision=STUB_VISION)
    model = build_model(cfg, dtype=plan.dtype, device=device, seed=0).to("cpu" if device.type == "cuda" else device)
    model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def build_anchor(plan: Plan, device):
    """Stock transformers Qwen2 with SDPA and gradient checkpointing, same config."""
    from transformers import AutoModelForCausalLM

    from training.model.profiles import get_profile

    text = get_profile("longvila-1.5b-qwen2").config(text=dict(plan.text)).text_config
    text._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(text, attn_implementation="sdpa").to(plan.dtype)
    model.to("cpu" if device.type == "cuda" else device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def project_step(model, ids: torch.Tensor) -> None:
    seg = torch.zeros_like(ids)
    model(input_ids=ids, labels=ids, segment_ids=seg).loss.backward()


def anchor_step(model, ids: torch.Tensor, chunk: int = 2048) -> None:
    """Checkpointed chunked cross-entropy: each chunk's logits are recomputed in backward, never stored."""
    from torch.utils.checkpoint import checkpoint

    hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]
    labels = torch.full_like(ids[0], -100)
    labels[:-1] = ids[0, 1:]

    def chunk_loss(h, y):
        return F.cross_entropy(model.lm_head(h).float(), y, ignore_index=-100, reduction="sum")

    total = sum(checkpoint(chunk_loss, hidden[i:i + chunk], labels[i:i + chunk], use_reentrant=False)
                for i in range(0, ids.shape[1], chunk))
    (total / (ids.shape[1] - 1)).backward()


@contextlib.contextmanager
def resident(model, device: torch.device):
    """Keep only the measured model on the GPU (the idle one waits in host memory)."""
    if device.type != "cuda":
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to("cpu")
        release()


def _step(model, fn, tokens: int, vocab: int, meter: Meter) -> tuple[float, float] | None:
    gen = torch.Generator(device=meter.device).manual_seed(1)
    ids = torch.randint(0, vocab, (1, tokens), device=meter.device, generator=gen)

    def run():
        fn(model, ids)
        model.zero_grad(set_to_none=True)

    with resident(model, meter.device):
        return meter.repeat(run, 1)


def step_table(plan: Plan, meter: Meter, project, anchor, vocab: int) -> tuple[list[str], dict]:
    u, size = meter.unit, "" if not plan.text else f"; CPU: {plan.text}"
    rows = ["### One training step, longvila-1.5b-qwen2 LLM (fwd+bwd, gradient checkpointing, all tokens "
            f"supervised, {str(plan.dtype)[6:]}{size})", "",
            f"| tokens | anchor s | anchor {u} | anchor tok/s | project s | project {u} | project tok/s "
            "| memory ratio | tok/s ratio |", "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    _step(project, project_step, plan.step_sizes[0], vocab, meter)  # warm-up (kernel selection, allocator)
    _step(anchor, anchor_step, plan.step_sizes[0], vocab, meter)
    seconds = {}
    for tokens in plan.step_sizes:
        ref = _step(anchor, anchor_step, tokens, vocab, meter)
        got = _step(project, project_step, tokens, vocab, meter)
        seconds[tokens] = (ref, got)
        rows.append(_step_row(tokens, ref, got))
        print(rows[-1], flush=True)
    return rows + [""], seconds


def _step_row(tokens, ref, got) -> str:
    def cells(r):
        return ["OOM"] * 3 if r is None else [f"{r[0]:.2f}", f"{r[1]:.1f}", f"{tokens / r[0]:,.0f}"]

    mem = "-" if ref is None or got is None else _ratio(got[1], ref[1])
    speed = "-" if ref is None or got is None else _ratio(ref[0], got[0])
    return "| " + " | ".join([f"{tokens:,}", *cells(ref), *cells(got), mem, speed]) + " |"


# ------------------------------------------------------------------------------------------ 3. longest fit
def longest_fit(models: dict, measured: dict, vocab: int, meter: Meter, deadline: float) -> list[str]:
    """Doubling from the largest measured size per method, until OOM or the time budget."""
    rows = ["### Longest training step that fits (doubling until out of memory, within the time budget)", "",
            "| method | longest that fits | its step s | next size | outcome |", "|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for index, (name, (model, fn)) in enumerate(models.items()):
        fits = [(t, r[index][0]) for t, r in measured.items() if r[index] is not None]
        best, best_s = max(fits) if fits else (0, 0.0)
        size, outcome = best * 2, "not tried"
        while best and time.monotonic() + 4.5 * best_s < deadline:
            r = _step(model, fn, size, vocab, meter)
            if r is None:
                outcome = "out of memory"
                break
            best, best_s, size = size, r[0], size * 2
        else:
            outcome = "not tried (time budget)" if best else outcome
        rows.append(f"| {name} | {best:,} | {best_s:.1f} | {size:,} | {outcome} |")
        print(rows[-1], flush=True)
    return rows + [""]


# ------------------------------------------------------------------------------------------ main
def header(device, plan: Plan) -> list[str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    kernel = select_kernel(device, plan.dtype, plan.heads[2]).name
    try:
        import flash_attn

        fa = f"flash-attn {flash_attn.__version__}"
    except ImportError:
        fa = "flash-attn not installed"
    load = ", load average %.1f %.1f %.1f" % os.getloadavg() if device.type == "cpu" else ""
    memory = ("CUDA peak allocation during the call (inputs, weights and gradients included; only the measured model "
              "is on the GPU)." if device.type == "cuda" else "growth of the process's peak RSS during the call.")
    return ["# Long context: fused attention, packed rows, chunked loss", "",
            f"Device: {name}; torch {torch.__version__}; {fa}; project attention kernel: `{kernel}`{load}.",
            f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `python bench/long_context.py`. Memory: {memory}", ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "long_context.md"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget (the fit search stops)")
    p.add_argument("--attn-sizes", type=int, nargs="+", help="token counts of the attention table (default: plan)")
    p.add_argument("--step-sizes", type=int, nargs="+", help="token counts of the training-step table")
    p.add_argument("--no-fit-search", action="store_true", help="skip the longest-fit search")
    args = p.parse_args(argv)
    start = time.monotonic()
    device = torch.device(args.device)
    plan = GPU if device.type == "cuda" else CPU
    plan = replace(plan, attn_sizes=args.attn_sizes or plan.attn_sizes, step_sizes=args.step_sizes or plan.step_sizes,
                   fit_search=plan.fit_search and not args.no_fit_search)
    if device.type == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    meter = Meter(device)
    lines = header(device, plan)
    print("\n".join(lines), flush=True)
    lines += attention_table(plan, meter)
    project, anchor = build_project(plan, device), build_anchor(plan, device)
    vocab = anchor.config.vocab_size
    rows, measured = step_table(plan, meter, project, anchor, vocab)
    lines += rows
    if plan.fit_search:
        models = {"anchor (stock + SDPA + checkpointing + chunked CE)": (anchor, anchor_step),
                  "project": (project, project_step)}
        lines += longest_fit(models, measured, vocab, meter, start + args.budget_s)
    else:
        lines += ["The fit search runs on GPU only.", ""]
    lines.append(f"Total wall time {time.monotonic() - start:.0f} s.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
