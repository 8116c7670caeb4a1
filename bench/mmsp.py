"""MM-SP benchmark: a long sequence through a tiny Qwen2-architecture LLM (attention-heavy: small hidden size,
long context) with the registered ``mmsp`` attention, on CPU gloo processes.

For SP=1 and, at world sizes 2 and 4, Ulysses / plain ring (contiguous layout) / zigzag ring / 2D (U=2 x R=2,
world 4), it measures one training step (forward + backward of the LM loss):

* tokens/s  = global tokens / step wall time (max over ranks, median of ``--steps`` timed steps after one
  warm-up step; the steps are separated by barriers);
* per-rank peak memory of a steady-state step: after one warm-up step, freed heap memory is returned to the
  OS (``malloc_trim``), the process's peak resident set (VmHWM) is reset with ``/proc/self/clear_refs``
  (value 5) and read again right after the timed step; reported as the increase over the resident set just
  before the step (model and inputs already allocated, no optimizer), i.e. activations + attention buffers
  + communication buffers of one forward+backward. The largest rank is shown.
* a "dedicated-core model" of the step time, because this 2-core machine is shared and a world of 2 or 4
  single-thread ranks does not get one core per rank: from per-rank CPU times (``time.process_time`` for the
  step, ``time.thread_time`` around the compute of every ring step, recorded by
  ``training.sp.ring.record_step_times``) it adds the slowest rank's non-attention work and, for every ring
  step, the slowest rank's attention compute (each step ends with a K/V hand-off between neighbours). This
  is the time with one core per rank and free communication; load imbalance (the plain ring's idle ranks)
  shows up here even when the oversubscribed machine hides it in wall time;
* per-layer communication per device from the formulas in anchors.md (N tokens, h = heads x head_dim,
  h_kv = kv_heads x head_dim, fp32), forward; backward roughly doubles it.

One set of spawned processes per world size (one thread each) runs the configurations one after another;
freed memory is returned to the OS (``malloc_trim``) before each measurement. Run::

    .venv/bin/python bench/mmsp.py            # 16k tokens, worlds 2 and 4 (a few minutes)
    .venv/bin/python bench/mmsp.py --seq 4096 # quicker

The machine has 2 cores: world 4 oversubscribes them (4 single-thread ranks on 2 cores), and other people's
jobs may be running; ratios from one run are more meaningful than absolute figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.sp.testing import DistributedPool  # noqa: E402


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def _release_free_memory() -> None:
    """Return freed heap pages to the OS so the next peak measurement starts from live memory only."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rank_bench(cfg: dict) -> dict:
    """Run on every rank: build the model, one measured warm-up step, timed steps."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from training.sp import register_mmsp_attention, sp_batch_context
    from training.sp.attention import layout_scheme
    from training.sp.layout import padded_length, shard, shard_positions
    from training.sp.testing import cached_groups

    U, R = cfg["ulysses"], cfg["ring"]
    world = dist.get_world_size()
    groups = cached_groups(U, R) if world > 1 else None
    mode = cfg["mode"]
    scheme = layout_scheme(mode)
    name = register_mmsp_attention()
    mcfg = Qwen2Config(
        vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["inter"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"], num_key_value_heads=cfg["kv_heads"],
        max_position_embeddings=cfg["seq"], attention_dropout=0.0,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(mcfg)
    model.set_attn_implementation(name)
    model.train()
    L = padded_length(cfg["seq"], groups if groups is not None else (1, 1))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg["vocab"], (1, L), generator=gen)
    labels = torch.roll(ids, -1, dims=1)
    if groups is not None:
        ids_l = shard(ids, 1, groups, scheme=scheme)
        lab_l = shard(labels, 1, groups, scheme=scheme)
        pos_l = shard_positions(L, groups, scheme=scheme).unsqueeze(0)
    else:
        ids_l, lab_l, pos_l = ids, labels, torch.arange(L).unsqueeze(0)

    def step():
        with sp_batch_context(None, groups=groups, mode=mode):
            logits = model(input_ids=ids_l, position_ids=pos_l).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), lab_l.view(-1),
                                                 reduction="sum") / L
        loss.backward()
        model.zero_grad(set_to_none=True)

    from training.sp.ring import pop_step_times, record_step_times

    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    step()  # warm-up (one-time allocations, kernel set-up): timed separately, not measured for memory
    first = time.perf_counter() - t0
    times, cpus, ring_steps, peaks = [], [], [], []
    ok = True
    for _ in range(cfg["steps"]):
        _release_free_memory()
        if world > 1:
            dist.barrier()
        rss_before = _status_kb("VmRSS:")
        ok = _reset_peak() and ok
        record_step_times(True)
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        c1 = time.process_time()
        peaks.append((_status_kb("VmHWM:") - rss_before) / 1024)
        if world > 1:
            dist.barrier()
        times.append(time.perf_counter() - t0)
        cpus.append(c1 - c0)
        ring_steps.append([t for _, _, t in pop_step_times()])
        record_step_times(False)
    model = None  # the closure holds it: drop the weights before the final trim
    _release_free_memory()
    return {"step_s": statistics.median(times), "first_s": first, "cpu_s": cpus, "ring_steps": ring_steps,
            "peak_delta_mb": max(peaks), "clear_refs": ok, "padded_len": L}


def dedicated_core_time(res: list[dict], i: int) -> float:
    """Step time the ranks would take with one dedicated core each, from CPU times of timed step ``i``:
    the non-attention work of the slowest rank plus, for every ring step of every attention call (same order
    on all ranks, each followed by a K/V hand-off that synchronises neighbours), the slowest rank's compute."""
    attn = [r["ring_steps"][i] for r in res]
    n = min(len(a) for a in attn)
    other = max(r["cpu_s"][i] - sum(a) for r, a in zip(res, attn))
    return other + sum(max(a[j] for a in attn) for j in range(n))


def comm_formulas(N: int, h: int, h_kv: int, U: int, R: int, kind: str) -> float:
    """Forward per-layer communication per device, in MB (fp32), by the anchors.md formulas."""
    P = U * R
    if kind == "sp1":
        el = 0
    elif kind == "ulysses":
        el = (N / P) * (2 * h + 2 * h_kv)
    elif kind in ("ring", "zigzag_ring"):
        el = 2 * N * h_kv
    else:  # 2d
        el = (2 * h + 2 * h_kv) * N / P + 2 * N * h_kv / U
    return el * 4 / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--inter", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1, help="timed steps after the measured warm-up step")
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--no-sp1", action="store_true", help="skip the single-process baseline")
    ap.add_argument("--json", type=str, default=None, help="also write the raw results here")
    args = ap.parse_args(argv)
    base = dict(seq=args.seq, layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                inter=args.inter, vocab=args.vocab, steps=args.steps)
    runs = []
    if not args.no_sp1:
        runs.append((1, "sp1", 1, 1))
    for w in args.worlds:
        runs += [(w, "ulysses", w, 1), (w, "ring", 1, w), (w, "zigzag_ring", 1, w)]
        if w == 4:
            runs.append((w, "2d", 2, 2))
    head_dim = args.hidden // args.heads
    h, h_kv = args.hidden, args.kv_heads * head_dim
    rows = []
    pools: dict[int, DistributedPool] = {}
    for world, kind, U, R in runs:
        mode = "auto" if kind == "sp1" else kind
        cfg = dict(base, ulysses=U, ring=R, mode=mode)
        t0 = time.perf_counter()
        if world not in pools:  # one set of processes per world size (configs run one after another)
            for p in pools.values():
                p.close()
            pools = {world: DistributedPool(world, timeout_s=900)}
        res = pools[world].run(rank_bench, cfg)
        wall = time.perf_counter() - t0
        step = max(r["step_s"] for r in res)
        model_s = statistics.median(dedicated_core_time(res, i) for i in range(args.steps))
        peak = max(r["peak_delta_mb"] for r in res)
        L = res[0]["padded_len"]
        rows.append(dict(world=world, kind=kind, U=U, R=R, tokens=L, step_s=step, tok_s=L / step, peak_mb=peak,
                         model_s=model_s, model_tok_s=L / model_s,
                         per_rank_peak_mb=[round(r["peak_delta_mb"], 1) for r in res],
                         comm_mb=comm_formulas(L, h, h_kv, U, R, kind), wall_s=wall))
        print(f"  done {kind:12s} world={world}  step={step:.2f}s  dedicated-core model={model_s:.2f}s  "
              f"peak/rank={peak:.0f} MB  ({wall:.0f}s)", flush=True)

    for p in pools.values():
        p.close()
    sp1 = next((r for r in rows if r["kind"] == "sp1"), None)
    print()
    print(f"MM-SP benchmark: Qwen2-arch LLM, {args.layers} layers, hidden {h}, heads {args.heads}/{args.kv_heads} kv, "
          f"{rows[0]['tokens']} tokens, fp32, CPU gloo, 1 thread per rank, fwd+bwd step")
    hdr = (f"| {'config':22s} | world | tokens/s | step s | vs SP=1 | model tok/s | model vs SP=1 | peak MB/rank "
           f"| mem vs SP=1 | comm MB/layer/dev (fwd) |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        label = {"sp1": "SP=1 (no SP)", "ulysses": f"Ulysses U={r['U']}", "ring": f"plain ring R={r['R']}",
                 "zigzag_ring": f"zigzag ring R={r['R']}", "2d": f"2D U={r['U']}xR={r['R']}"}[r["kind"]]
        speed = f"{r['tok_s'] / sp1['tok_s']:.2f}x" if sp1 else "-"
        mem = f"{r['peak_mb'] / sp1['peak_mb']:.2f}x" if sp1 and sp1["peak_mb"] > 0 else "-"
        mspeed = f"{r['model_tok_s'] / sp1['model_tok_s']:.2f}x" if sp1 else "-"
        print(f"| {label:22s} | {r['world']:5d} | {r['tok_s']:8.0f} | {r['step_s']:6.2f} | {speed:>7s} | "
              f"{r['model_tok_s']:11.0f} | {mspeed:>13s} | {r['peak_mb']:12.0f} | {mem:>11s} | {r['comm_mb']:23.1f} |")
    print()
    for w in args.worlds:
        by = {r["kind"]: r for r in rows if r["world"] == w}
        for key, what in (("tok_s", "measured wall"), ("model_tok_s", "dedicated-core model")):
            if "ring" in by and "zigzag_ring" in by:
                print(f"world {w} [{what}]: zigzag ring / plain ring = "
                      f"{by['zigzag_ring'][key] / by['ring'][key]:.2f}x (target >= 1.3x)")
            if "2d" in by and "ring" in by:
                print(f"world {w} [{what}]: 2D / plain ring = {by['2d'][key] / by['ring'][key]:.2f}x, "
                      f"2D / zigzag ring = {by['2d'][key] / by['zigzag_ring'][key]:.2f}x "
                      "(target: 2D no slower than ring)")
        if sp1 and w == 4:
            worst = max(r["peak_mb"] for r in rows if r["world"] == 4)
            print(f"world 4: worst per-rank peak memory / SP=1 = {worst / sp1['peak_mb']:.2f}x (target <= 0.35x)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
