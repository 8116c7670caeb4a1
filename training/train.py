"""`torchrun -m training.train`: train one LongVILA stage (or the smoke batches) on CPU (gloo) or GPU (nccl).

Examples::

    # issue-3 smoke command: random tiny model, smoke batches, Ulysses SP over 2 ranks
    torchrun --nproc-per-node 2 -m training.train --profile smoke --ulysses-degree 2 --max-steps 3

    # a recipe stage on a stage dataset, initialised from the previous stage's export
    torchrun --nproc-per-node 1 -m training.train --recipe smoke --stage stage3_short_sft \\
        --data data/lake/datasets/stage3_dataset --init-from data/lake/checkpoints/stage2_pretraining/final \\
        --output-dir data/lake/checkpoints/stage3_short_sft --metrics-out metrics.jsonl --resume

Outputs under --output-dir (one writer at a time: rank 0 holds its lock for the whole run):
`runs/<fingerprint>/checkpoints/step-NNNNNN/` (periodic, atomic, sha256 manifest, no pickle; one directory
per run identity: data versions, recipe stage, layout, seed...), `exports/<sha256[:16]>/` (model +
processor, `from_pretrained`-loadable, immutable), `final` -> the newest export, `result.json`,
`loss_curve.png`. Under Dagster Pipes, rank 0 reports the materialisation.
"""

from __future__ import annotations

import argparse
import sys

from longvila.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="smoke", help="model profile (training.model.profiles) when not --init-from")
    p.add_argument("--recipe", default=None, help="recipe name (training/recipes/*.yaml) or path")
    p.add_argument("--stage", default=None, help="stage name (stage3_short_sft) or number (3); needs --recipe")
    p.add_argument("--ulysses-degree", type=int, default=None, help="Ulysses SP degree (default: recipe, else 1)")
    p.add_argument("--ring-degree", type=int, default=None, help="ring SP degree (default: recipe, else 1)")
    p.add_argument("--max-steps", type=int, default=None, help="optimiser steps (default: recipe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics-out", default=None, help="JSON-lines file: step, loss, tokens, seconds, peak memory")
    p.add_argument("--init-from", default=None, help="from_pretrained directory to start from")
    p.add_argument("--output-dir", default="runs/train")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --output-dir")
    p.add_argument("--data", nargs="*", default=[],
                   help="stage dataset dir(s), .parquet or webdataset .tar (local/URL)")
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept of this run")
    p.add_argument("--keep-runs", type=int, default=2,
                   help="checkpoint directories of other run identities kept (most recently used first)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="activation checkpointing per decoder layer (default: recipe, else on for >= 16k tokens)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="compute dtype; auto: bfloat16 on GPU, float32 on CPU (FSDP keeps float32 master weights)")
    p.add_argument("--sharding", default="auto", choices=["auto", "fsdp", "replicate"],
                   help="model states: FSDP2 over all ranks, or full replicas; auto: fsdp under torchrun")
    p.add_argument("--cpu-offload", action=argparse.BooleanOptionalAction, default=None,
                   help="FSDP: keep sharded parameters, gradients and optimizer states in host memory")
    p.add_argument("--lock-timeout", type=float, default=0.0,
                   help="seconds to wait while another run holds --output-dir (0: fail at once, naming it)")
    p.add_argument("--no-export", dest="export", action="store_false", help="skip the final from_pretrained export")
    p.add_argument("--num-threads", type=int, default=None, help="torch intra-op threads per rank")
    p.add_argument("--log-every", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--kill-after-step", type=int, default=None, help=argparse.SUPPRESS)  # test hook
    return p


def main(argv: list[str] | None = None) -> int:
    from .trainer import TrainArgs, train

    ns = build_parser().parse_args(argv)
    if ns.stage and not ns.recipe:
        ns.recipe = "smoke"
    args = TrainArgs(**vars(ns))
    try:
        train(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
