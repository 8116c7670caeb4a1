"""Rank-side checks of the sharded trainer (used by tests/training through training.sp.testing.DistributedPool;
runnable by hand the same way).

`case_train(root, sharding, **train_args)` runs the real trainer (`training.trainer.train`) on every rank of
an initialised process group with `--sharding <sharding>` and returns what rank 0 wrote: per-step losses
and gradient norms, and the path of the exported (gathered, LoRA-merged) weights.
`case_shard_bytes(profile)` shards a model as the trainer does and returns this rank's parameter bytes.
"""

from __future__ import annotations

import os

import torch

from .config import TrainArgs
from .metrics import read_metrics
from .trainer import train


def case_train(root: str, sharding: str, **train_args) -> dict:
    out = os.path.join(root, sharding)
    res = train(TrainArgs(output_dir=out, metrics_out=os.path.join(out, "metrics.jsonl"), sharding=sharding,
                          **train_args))
    if not res.get("final_dir"):
        return {}
    recs = read_metrics(os.path.join(out, "metrics.jsonl"))
    return {"losses": [r["loss"] for r in recs], "grad_norms": [r["grad_norm"] for r in recs],
            "export": os.path.join(res["final_dir"], "model.safetensors"), "sharding": res["sharding"]}


def case_shard_bytes(profile: str) -> int:
    from .fsdp import LossModule, shard
    from .model.profiles import build_model

    lm = LossModule(build_model(profile, seed=0), None)
    shard(lm, torch.device("cpu"), torch.float32, cpu_offload=False)
    return sum(p.to_local().numel() * p.element_size() for p in lm.parameters())
