"""Multi-process harness for MM-SP tests and benchmarks (CPU, gloo; works with any backend).

:class:`DistributedPool` starts ``world_size`` spawned processes ONCE, initialises ``torch.distributed`` in
each (free loopback port), and then runs any number of tasks: ``pool.run(fn, *args)`` calls
``fn(*args)`` on every rank and returns the per-rank results (rank order). ``fn`` must be importable in the
children: a module-level function of an importable module, or a ``"package.module:function"`` string. A
failure on any rank raises :class:`DistributedError` with the remote traceback; a pool whose task failed or
timed out is torn down and restarted on the next ``run`` (a rank stuck in a collective cannot be reused).

The ``case_*`` functions below are the rank-side checks used by ``tests/mmsp`` (and usable by others):
they build the same global inputs on every rank from a seed, run the sharded computation, unshard, and
return error figures computed against a single-process reference.
"""

from __future__ import annotations

import math
import os
import queue
import socket
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.kernels import AttentionKernel, lse_dtype, register_kernel


class DistributedError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resolve(fn: Callable | str) -> Callable:
    if callable(fn):
        return fn
    import importlib

    mod, _, name = fn.partition(":")
    return getattr(importlib.import_module(mod), name)


def _worker(rank: int, world: int, port: int, backend: str, threads: int, tasks, results, timeout_s: float) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
        results.put(("ready", rank, True, None))
    except Exception:  # pragma: no cover - reported to the parent
        results.put(("ready", rank, False, traceback.format_exc()))
        return
    while True:
        task = tasks.get()
        if task is None:
            break
        task_id, fn, args, kwargs = task
        try:
            out = _resolve(fn)(*args, **kwargs)
            results.put((task_id, rank, True, out))
        except BaseException:
            results.put((task_id, rank, False, traceback.format_exc()))
    try:
        dist.destroy_process_group()
    except Exception:
        pass


class DistributedPool:
    def __init__(self, world_size: int, *, backend: str = "gloo", threads: int = 1, timeout_s: float = 180.0):
        self.world_size = world_size
        self.backend = backend
        self.threads = threads
        self.timeout_s = timeout_s
        self._procs: list = []
        self._next_id = 0
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        port = free_port()
        self._tasks = [ctx.Queue() for _ in range(self.world_size)]
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=_worker,
                args=(r, self.world_size, port, self.backend, self.threads, self._tasks[r], self._results,
                      self.timeout_s),
                daemon=True,
            )
            for r in range(self.world_size)
        ]
        for p in self._procs:
            p.start()
        self._collect("ready")

    def _collect(self, task_id) -> list:
        out: list[Any] = [None] * self.world_size
        got = 0
        deadline = time.monotonic() + self.timeout_s
        errors = []
        while got < self.world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                tid, rank, ok, value = self._results.get(timeout=min(remaining, 2.0))
            except queue.Empty:
                dead = [p.exitcode for p in self._procs if not p.is_alive()]
                if dead and not errors:
                    errors.append(f"worker processes died (exit codes {dead})")
                    break
                continue
            if tid != task_id:
                continue
            got += 1
            if ok:
                out[rank] = value
            else:
                errors.append(f"rank {rank}:\n{value}")
                deadline = min(deadline, time.monotonic() + 5.0)  # give the others a moment to report
        if errors or got < self.world_size:
            self.close(force=True)
            msg = "\n".join(errors) if errors else (f"timed out after {self.timeout_s}s waiting for "
                                                     f"{self.world_size - got} rank(s)")
            raise DistributedError(f"task {task_id} failed on world size {self.world_size}:\n{msg}")
        return out

    def run(self, fn: Callable | str, *args, **kwargs) -> list:
        if not self._procs:
            self._start()
        self._next_id += 1
        tid = self._next_id
        for q in self._tasks:
            q.put((tid, fn, args, kwargs))
        return self._collect(tid)

    def close(self, force: bool = False) -> None:
        if not self._procs:
            return
        if not force:
            for q in self._tasks:
                q.put(None)
            for p in self._procs:
                p.join(timeout=10)
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_distributed(fn: Callable | str, world_size: int, *args, **kwargs) -> list:
    """One-off: start a pool, run ``fn`` on every rank, shut down."""
    with DistributedPool(world_size) as pool:
        return pool.run(fn, *args, **kwargs)


# ------------------------------------------------------------------------------------------ rank-side cases
_GROUP_CACHE: dict = {}


def cached_groups(ulysses: int, ring: int):
    """init_sp_groups once per (U, R) per process (new_group is collective; all ranks run the same tasks)."""
    from .groups import init_sp_groups

    key = (ulysses, ring)
    if key not in _GROUP_CACHE:
        _GROUP_CACHE[key] = init_sp_groups(ulysses, ring)
    return _GROUP_CACHE[key]


def case_groups(ulysses: int, ring: int) -> dict:
    """This rank's SPGroups fields and the actual member ranks of each ProcessGroup."""
    g = cached_groups(ulysses, ring)
    members = {
        name: dist.get_process_group_ranks(getattr(g, f"{name}_group")) for name in ("sp", "ulysses", "ring", "dp")
    }
    fields = {k: getattr(g, k) for k in ("world_size", "rank", "sp_size", "ulysses_size", "ring_size", "dp_size",
                                         "dp_rank", "sp_rank", "ulysses_rank", "ring_rank")}
    return {"fields": fields, "members": members, "formula": g.ranks()}


def reference_attention(q, k, v, *, causal: bool, segment_ids=None, scale=None):
    """Plain single-process float64-capable reference: dense softmax attention with repeat_kv (GQA),
    causal + same-segment mask, padding (id < 0) rows -> 0. Test-only: it builds the S x S scores."""
    B, H, S, D = q.shape
    n = H // k.shape[1]
    k = k.repeat_interleave(n, 1)
    v = v.repeat_interleave(n, 1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    keep = torch.ones(S, S, dtype=torch.bool, device=q.device)
    if causal:
        keep = keep.tril()
    keep = keep[None, None].expand(B, 1, S, S)
    if segment_ids is not None:
        keep = keep & ((segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids >= 0)[:, :, None])[:, None]
    s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.matmul(p, v)


class MathKernel(AttentionKernel):
    """The exact matmul block kernel (float64-capable, any device): the TEST REFERENCE for the fused kernels
    of :mod:`training.kernels`, with the same packed contract. Registered as ``"math"`` when this module is
    imported; production code never selects it."""

    name = "math"

    def unsupported(self, device, dtype, head_dim):
        return None

    @staticmethod
    def _scores(q, k, causal, scale):
        rep = q.shape[1] // k.shape[1]
        s = torch.einsum("qhd,khd->hqk", q.to(torch.float64), k.repeat_interleave(rep, 1).to(torch.float64)) * scale
        if causal:
            s = s.masked_fill(~torch.ones(s.shape[1:], dtype=torch.bool, device=s.device).tril(), float("-inf"))
        return s

    def forward(self, q, k, v, layout, scale):
        out, lse = torch.empty_like(q), torch.empty(q.shape[:2], dtype=lse_dtype(q.dtype), device=q.device)
        for qa, qb, ka, kb in layout.pieces():
            s = self._scores(q[qa:qb], k[ka:kb], layout.causal, scale)
            rep = q.shape[1] // k.shape[1]
            lse[qa:qb] = torch.logsumexp(s, -1).t().to(lse.dtype)
            vv = v[ka:kb].repeat_interleave(rep, 1).to(torch.float64)
            out[qa:qb] = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), vv).to(q.dtype)
        return out, lse

    def backward(self, dout, q, k, v, out, lse, layout, scale):
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        rep = q.shape[1] // k.shape[1]
        for qa, qb, ka, kb in layout.pieces():
            p = torch.exp(self._scores(q[qa:qb], k[ka:kb], layout.causal, scale) - lse[qa:qb].t().double()[..., None])
            do, o = dout[qa:qb].double(), out[qa:qb].double()
            vv = v[ka:kb].repeat_interleave(rep, 1).double()
            kk = k[ka:kb].repeat_interleave(rep, 1).double()
            ds = p * (torch.einsum("qhd,khd->hqk", do, vv) - (do * o).sum(-1).t()[..., None])
            dq[qa:qb] = (torch.einsum("hqk,khd->qhd", ds, kk) * scale).to(q.dtype)
            dkk = torch.einsum("hqk,qhd->khd", ds, q[qa:qb].double()) * scale
            dvv = torch.einsum("hqk,qhd->khd", p, do)
            dk[ka:kb] = dkk.view(kb - ka, -1, rep, dkk.shape[-1]).sum(2).to(k.dtype)
            dv[ka:kb] = dvv.view(kb - ka, -1, rep, dvv.shape[-1]).sum(2).to(v.dtype)
        return dq, dk, dv


register_kernel(MathKernel())


def reference_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S] boolean block-diagonal causal mask for the stock-transformers REFERENCE runs (test-only:
    quadratic); padding rows (id < 0) see only themselves so that the reference stays finite."""
    S = segment_ids.shape[1]
    keep = torch.ones(S, S, dtype=torch.bool, device=segment_ids.device).tril()[None]
    keep = keep & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return (keep | torch.eye(S, dtype=torch.bool, device=segment_ids.device)[None])[:, None]


def make_segments(batch: int, length: int, kind: str, gen: torch.Generator) -> torch.Tensor | None:
    """None | "packed" (random document boundaries) | "padded" (tail padding, -1) | "packed_padded"."""
    if kind in (None, "none"):
        return None
    seg = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        if "packed" in kind:
            cuts = sorted(torch.randperm(length - 1, generator=gen)[:3].add(1).tolist())
            for i, c in enumerate(cuts):
                seg[b, c:] = i + 1
        if "padded" in kind:
            n_pad = int(torch.randint(1, max(2, length // 3), (1,), generator=gen))
            seg[b, length - n_pad:] = -1
    return seg


def case_attention(cfg: dict) -> dict:
    """Compare sp_attention (output, dq, dk, dv) against the single-process reference.

    cfg: ulysses, ring, mode, dtype ("float64"/"float32"), B, Hq, Hkv, L (global, multiple of 2P), D, causal,
    segments (see make_segments), seed, kernel (a training.kernels name, "auto" or "math").
    Returns relative max errors {"out", "dq", "dk", "dv"} (max |a-b| / max |b|) plus block stats.
    """
    from .attention import layout_scheme, sp_attention
    from .layout import shard, unshard
    from training.kernels import block_kernel

    groups = cached_groups(cfg["ulysses"], cfg["ring"])
    mode = cfg.get("mode", "auto")
    scheme = layout_scheme(mode)
    dtype = getattr(torch, cfg.get("dtype", "float64"))
    B, Hq, Hkv, L, D = cfg["B"], cfg["Hq"], cfg["Hkv"], cfg["L"], cfg["D"]
    causal = cfg.get("causal", True)
    gen = torch.Generator().manual_seed(cfg.get("seed", 0))
    q = torch.randn(B, Hq, L, D, generator=gen, dtype=torch.float64)
    k = torch.randn(B, Hkv, L, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, Hkv, L, D, generator=gen, dtype=torch.float64)
    dout = torch.randn(B, Hq, L, D, generator=gen, dtype=torch.float64)
    seg = make_segments(B, L, cfg.get("segments"), gen)

    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qr, kr, vr, causal=causal, segment_ids=seg)
    ref.backward(dout)

    with block_kernel(cfg.get("kernel", "auto")):
        ql, kl, vl = (shard(t.to(dtype), 2, groups, scheme=scheme).requires_grad_() for t in (q, k, v))
        segl = None if seg is None else shard(seg, 1, groups, scheme=scheme)
        out = sp_attention(ql, kl, vl, groups=groups, causal=causal, segment_ids=segl, mode=mode)
        out.backward(shard(dout.to(dtype), 2, groups, scheme=scheme))
    from .ring import LAST_FORWARD_STATS

    stats = dict(LAST_FORWARD_STATS)
    got = {
        "out": unshard(out.detach(), 2, groups, scheme=scheme),
        "dq": unshard(ql.grad, 2, groups, scheme=scheme),
        "dk": unshard(kl.grad, 2, groups, scheme=scheme),
        "dv": unshard(vl.grad, 2, groups, scheme=scheme),
    }
    want = {"out": ref.detach(), "dq": qr.grad, "dk": kr.grad, "dv": vr.grad}
    errs = {}
    for name in got:
        a, b = got[name].double(), want[name]
        errs[name] = float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
        errs[name + "_finite"] = bool(torch.isfinite(a).all())
    errs["work"] = stats.get("work", 0)
    errs["blocks_skipped"] = stats.get("skipped", 0)
    return errs


def tiny_llm(arch: str = "qwen2", *, attn: str = "sdpa", seed: int = 0, dtype=torch.float64, **overrides):
    """A tiny random-initialised stock transformers causal LM (Qwen2ForCausalLM or LlamaForCausalLM)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, attention_dropout=0.0)
    kw.update(overrides)
    cls_cfg, cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    cfg = cls_cfg(**kw)
    torch.manual_seed(seed)
    model = cls(cfg).to(dtype)
    model.set_attn_implementation(attn)
    return model.eval()


def case_llm(cfg: dict) -> dict:
    """Stock tiny LLM with attn_implementation="mmsp" on local shards (shard positions as position_ids) vs
    the same weights with SDPA in one process: max |logit diff| and max |param grad diff| (grads all-reduced
    over the SP group).

    cfg["segments"] (optional, see make_segments): pack documents into each row (position ids restart per
    document) and pad; the reference then uses SDPA with an explicit 4-D block-diagonal causal mask (padding
    tokens attend only themselves there, so they stay finite), and only real tokens are compared/weighted.
    """
    from .attention import layout_scheme, register_mmsp_attention, sp_batch_context
    from .layout import padded_length, shard, unshard

    name = register_mmsp_attention()
    groups = cached_groups(cfg["ulysses"], cfg["ring"])
    mode = cfg.get("mode", "auto")
    scheme = layout_scheme(mode)
    dtype = getattr(torch, cfg.get("dtype", "float64"))
    arch = cfg.get("arch", "qwen2")
    B, T = cfg.get("B", 2), cfg.get("T", 40)
    L = padded_length(T, groups)
    gen = torch.Generator().manual_seed(cfg.get("seed", 0))
    ids = torch.randint(0, 128, (B, L), generator=gen)
    overrides = cfg.get("overrides", {})
    seg = make_segments(B, L, cfg.get("segments"), gen)
    if seg is not None:
        seg[:, T:] = -1  # the layout padding
        pos = torch.zeros(B, L, dtype=torch.long)
        for b in range(B):
            for i in range(1, L):
                pos[b, i] = pos[b, i - 1] + 1 if seg[b, i] == seg[b, i - 1] else 0
        ref_mask = reference_mask(seg)
        valid = seg >= 0
    else:
        pos = torch.arange(L).expand(B, L)
        ref_mask = None
        valid = torch.ones(B, L, dtype=torch.bool)

    ref_model = tiny_llm(arch, attn="sdpa", dtype=dtype, **overrides)
    ref_logits = ref_model(input_ids=ids, position_ids=pos, attention_mask=ref_mask).logits
    w = torch.randn(ref_logits.shape, generator=gen, dtype=torch.float64).to(dtype) * valid[..., None].to(dtype)
    (ref_logits * w).sum().backward()

    from . import attention as _attention

    calls_before = _attention.CALL_COUNT["mmsp"]
    model = tiny_llm(arch, attn=name, dtype=dtype, **overrides)
    ids_l = shard(ids, 1, groups, scheme=scheme)
    pos_l = shard(pos, 1, groups, scheme=scheme)
    seg_l = None if seg is None else shard(seg, 1, groups, scheme=scheme)
    with sp_batch_context(seg_l, groups=groups, mode=mode):
        logits_l = model(input_ids=ids_l, position_ids=pos_l).logits
    (logits_l * shard(w, 1, groups, scheme=scheme)).sum().backward()
    logits = unshard(logits_l.detach(), 1, groups, scheme=scheme)
    grad_err = 0.0
    for (n1, p1), (n2, p2) in zip(ref_model.named_parameters(), model.named_parameters()):
        g = p2.grad.detach().clone()
        dist.all_reduce(g, group=groups.sp_group)
        grad_err = max(grad_err, float((g - p1.grad).abs().max() / p1.grad.abs().max().clamp_min(1e-30)))
    # negative control: the same sharded run without causality / packing must differ clearly
    with torch.no_grad(), sp_batch_context(None, groups=groups, mode=mode, causal=seg is not None):
        wrong = unshard(model(input_ids=ids_l, position_ids=pos_l).logits, 1, groups, scheme=scheme)
    ref = ref_logits.detach()[valid]
    scale = ref.abs().max()
    return {
        "control_logits": float((wrong[valid] - ref).abs().max() / scale),
        "logits": float((logits[valid] - ref).abs().max() / scale),
        "mmsp_calls": _attention.CALL_COUNT["mmsp"] - calls_before,
        "grads": grad_err,
    }


# ------------------------------------------------------------------------------------------ memory bounds
def rss_peak_growth(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(bytes by which this process's peak RSS grew while ``fn()`` ran, its result). Linux: free heap memory
    is handed back first (glibc ``malloc_trim``) and the peak (VmHWM) is reset through /proc/self/clear_refs,
    so neither earlier peaks nor memory cached by the allocator hide growth."""
    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return int(f.read().split(key + ":")[1].split()[0]) * 1024

    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement may undercount reused memory
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    result = fn()
    return status("VmHWM") - base, result


def case_attention_memory(tokens: int, docs: int, heads: int = 4, kv_heads: int = 2, dim: int = 64) -> dict:
    """Peak RSS growth of one sp_attention forward + backward (float32, one process, causal) over ``tokens``
    packed into ``docs`` equal documents; inputs exist before the measurement starts."""
    from .attention import sp_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, tokens, h, dim, generator=gen).transpose(1, 2).requires_grad_()
               for h in (heads, kv_heads, kv_heads))
    seg = torch.arange(docs).repeat_interleave(tokens // docs)[None]
    grad = torch.randn(1, heads, tokens, dim, generator=gen)

    def run():
        t0 = time.perf_counter()
        sp_attention(q, k, v, groups=None, segment_ids=seg).backward(grad)
        return time.perf_counter() - t0

    growth, seconds = rss_peak_growth(run)
    return {"growth": growth, "seconds": seconds, "input_bytes": 3 * q.numel() * 4}


def case_loss_memory(tokens: int, vocab: int, hidden: int) -> dict:
    """Peak RSS growth of one chunked LM-head cross-entropy forward + backward (float32, every token
    supervised); the LM-head weight and the hidden states exist before the measurement starts."""
    from training.loss import linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    h = (torch.randn(tokens, hidden, generator=gen) * 0.1).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) * 0.02).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=gen)

    def run():
        t0 = time.perf_counter()
        loss = linear_cross_entropy(h, w, labels)
        loss.backward()
        return time.perf_counter() - t0, float(loss.detach())

    growth, (seconds, loss) = rss_peak_growth(run)
    return {"growth": growth, "seconds": seconds, "loss": loss, "weight_bytes": w.numel() * 4,
            "full_logits_bytes": tokens * vocab * 4}
