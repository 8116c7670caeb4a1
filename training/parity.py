"""Rank-side check that FSDP-sharded training equals replicated training (used by tests/training through
training.sp.testing.DistributedPool; runnable by hand the same way).

`case_train(root, sharding, **train_args)` runs the real trainer (`training.trainer.train`) on every rank of
an initialised process group with `--sharding <sharding>` and returns what rank 0 wrote: per-step losses
and gradient norms, and the path of the exported (gathered, LoRA-merged) weights.
"""

from __future__ import annotations

import os

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
