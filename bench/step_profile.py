"""Where a 1.5B training step spends its GPU time: the project's step beside the anchor's (bench/long_context.py's
models and steps), one warm-up then one profiled step each, top CUDA kernels by self time.

    python bench/step_profile.py --tokens 32768
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import long_context as lc  # noqa: E402


def profiled(name: str, model, step, tokens: int, vocab: int, rows: int) -> None:
    device = torch.device("cuda")
    ids = torch.randint(0, vocab, (1, tokens), device=device)
    with lc.resident(model, device):
        step(model, ids)
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            step(model, ids)
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
    print(f"\n## {name}, {tokens} tokens\n")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--rows", type=int, default=18)
    args = p.parse_args()
    plan, device = lc.GPU, torch.device("cuda")
    project, anchor = lc.build_project(plan, device), lc.build_anchor(plan, device)
    vocab = anchor.config.vocab_size
    profiled("anchor", anchor, lc.anchor_step, args.tokens, vocab, args.rows)
    profiled("project", project, lc.project_step, args.tokens, vocab, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
