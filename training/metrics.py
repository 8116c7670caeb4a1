"""Training metrics: JSON lines (one object per optimiser step) and the loss-curve plot.

Each line: {"step", "loss", "tokens", "supervised_tokens", "seconds", "tokens_per_s", "lr",
"peak_memory_mb", "stage", "phase"}; `tokens` counts the (non-padding) tokens of the global batch,
`seconds` the wall time of the step.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device | str | None = None) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, else the max resident set size."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class MetricsWriter:
    """Append JSON lines to `path` (flushed per line so a killed run keeps what it logged)."""

    def __init__(self, path: str | os.PathLike | None, append: bool = False):
        self.path = Path(path) if path else None
        self._f = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a" if append else "w")

    def write(self, rec: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(rec, sort_keys=True) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Read metrics lines; with resumed runs the last record of each step wins, in step order."""
    by_step: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if "step" in rec:
            by_step[int(rec["step"])] = rec
    return [by_step[k] for k in sorted(by_step)]


def summarize(records: list[dict]) -> dict:
    if not records:
        return {"steps": 0}
    secs = sum(r.get("seconds", 0.0) for r in records)
    toks = sum(r.get("tokens", 0) for r in records)
    return {
        "steps": len(records),
        "final_loss": records[-1]["loss"],
        "first_loss": records[0]["loss"],
        "tokens": toks,
        "seconds": secs,
        "tokens_per_s": toks / secs if secs > 0 else 0.0,
        "peak_memory_mb": max(r.get("peak_memory_mb", 0.0) for r in records),
    }


def plot_loss_curve(records: list[dict], out_png: str | os.PathLike, title: str = "training loss") -> Path:
    """Write a PNG of loss per step (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from longvila.io import atomic_write

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out_png)
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out
