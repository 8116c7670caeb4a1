"""Measured memory of the trainer's FSDP2 step against the memory plan (training.plan), on the device at hand.

    .venv/bin/python bench/fsdp_memory.py                  # CPU: smoke profile, small sizes (peak RSS)
    python bench/fsdp_memory.py --profile longvila-1.5b-qwen2 --tokens 4096 8192 16384 [--cpu-offload]   # GPU

One process (a world-1 process group: gloo on CPU, nccl on CUDA) runs the trainer's own step path
(training.fsdp.LossModule sharded by training.fsdp.shard: float32 master weights, bf16 compute on GPU,
activation checkpointing per decoder layer, AdamW) on random weights and a random text row of each
length, two optimizer steps per length; the peak of the second step (optimizer states present) is
compared with `training.plan.estimate` for the same configuration (the trainer's chunked loss).
CUDA: `torch.cuda.max_memory_allocated` (the comparison); CPU: the process's peak resident set, printed only (it
includes the interpreter and libraries, so no error is computed; the CPU check of the plan's terms is
tests/training/test_plan.py).
Prints a table and writes bench/out/fsdp_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 2 ** 30


def _peak(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def _reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def build(profile: str, device, dtype, checkpointing: bool, cpu_offload: bool):
    from training.fsdp import LossModule, shard
    from training.model.profiles import build_model

    model = build_model(profile, dtype=torch.float32, device=device, seed=0)
    if checkpointing:
        model.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    lm = LossModule(model, None)
    shard(lm, device, dtype, cpu_offload)
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-5)
    return lm, opt


def one_step(lm, opt, tokens: int, device) -> float:
    cfg = lm.model.config
    ids = torch.randint(0, min(cfg.text_config.vocab_size, cfg.image_token_id), (1, tokens), device=device)
    batch = {"input_ids": ids, "labels": ids.clone(), "segment_ids": torch.zeros_like(ids)}
    t0 = time.perf_counter()
    loss, _ = lm(batch)
    torch.nn.utils.clip_grad_norm_([p for p in lm.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def measure(args, device, dtype) -> list[dict]:
    from training import plan

    t0 = time.perf_counter()
    lm, opt = build(args.profile, device, dtype, args.checkpointing, args.cpu_offload)
    print(f"built and sharded {args.profile} in {time.perf_counter() - t0:.0f} s", flush=True)
    shapes = plan.model_shapes(args.profile)
    rows = []
    for t in args.tokens:
        p = plan.Plan(shapes=shapes, tokens=t, world=1, compute_bytes=torch.finfo(dtype).bits // 8,
                      checkpointing=args.checkpointing, cpu_offload=args.cpu_offload, gpu_gib=args.gpu_gib)
        est = plan.estimate(p)["total"]
        row = {"tokens": t, "estimated_gib": est / GIB, "plan_fits": plan.fits(p, plan.estimate(p))}
        try:
            print(f"{t} tokens: first step {one_step(lm, opt, t, device):.1f} s", flush=True)
            _reset(device)
            secs = one_step(lm, opt, t, device)
            peak = _peak(device)
            row.update(measured_gib=peak / GIB, seconds=secs, tokens_per_s=t / secs,
                       error=(est - peak) / peak if device.type == "cuda" else None)
        except torch.OutOfMemoryError:
            row.update(measured_gib=None, error=None)
            opt.zero_grad(set_to_none=True)
        _reset(device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default=None)
    ap.add_argument("--tokens", type=int, nargs="+", default=None)
    ap.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--cpu-offload", action="store_true")
    ap.add_argument("--gpu-gib", type=float, default=None)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "fsdp_memory.json"))
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    args.profile = args.profile or ("longvila-1.5b-qwen2" if cuda else "smoke")
    args.tokens = args.tokens or ([4096, 8192, 16384] if cuda else [512, 1024])
    args.gpu_gib = args.gpu_gib or (torch.cuda.get_device_properties(0).total_memory / GIB if cuda else 8.0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = measure(args, device, dtype)
    dist.destroy_process_group()
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"\nFSDP step memory, {args.profile}, world 1, {name}, checkpointing {args.checkpointing}, "
          f"cpu offload {args.cpu_offload}, chunked loss")
    print("| tokens | plan GiB | measured peak GiB | plan error | step s | tokens/s |\n|---|---|---|---|---|---|")
    for r in rows:
        meas = "OOM" if r["measured_gib"] is None else f"{r['measured_gib']:.1f}"
        err = "-" if r["error"] is None else f"{r['error']:+.0%}"
        sec = "-" if r.get("seconds") is None else f"{r['seconds']:.2f}"
        tps = "-" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:.0f}"
        print(f"| {r['tokens']} | {r['estimated_gib']:.1f}{'' if r['plan_fits'] else ' (no fit)'} | {meas} | "
              f"{err} | {sec} | {tps} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": name, "profile": args.profile, "rows": rows,
                                          "cpu_offload": args.cpu_offload,
                                          "checkpointing": args.checkpointing}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
