"""Passkey retrieval: does a checkpoint find a 5-digit key hidden in long filler text?

The test of context extension (stage 4): the same conversations the stage-4 data is made of
(`training.data.passkey.render_passkey`: filler sentences, the key at a depth, the question), sized
to fill `length` tokens with the checkpoint's own processor, for every (length, depth) of the grid
and `samples_per_cell` keys drawn from `seed`. Scoring as in V-NIAH (`evaluation.niah`): one
teacher-forced forward over prompt + reference answer ("The pass key is 12345."); the sample is
correct when the arg-max token at every answer position is the reference token, i.e. when greedy
decoding would start with the whole answer, key included.

    result = run_passkey(model, processor, PasskeyConfig(lengths=[256, 1024]))
    result.accuracy_by_length()   # {256: 1.0, 1024: 0.95}
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from longvila import io as lio
from longvila.progress import ProgressFn, Throttled

__all__ = ["PasskeyConfig", "PasskeyResult", "run_passkey", "write_passkey_outputs"]


@dataclass
class PasskeyConfig:
    lengths: list[int] = field(default_factory=lambda: [256, 1024])
    depths: list[float] = field(default_factory=lambda: [0.0, 25.0, 50.0, 75.0, 100.0])
    samples_per_cell: int = 4
    seed: int = 1234  # not the training set's seed: held-out keys
    digits: int = 5  # key length, as in the training set

    def validate(self) -> "PasskeyConfig":
        if not self.lengths or any(int(n) < 16 for n in self.lengths):
            raise ValueError(f"lengths must be token counts >= 16: {self.lengths}")
        if not self.depths or any(not 0.0 <= float(d) <= 100.0 for d in self.depths):
            raise ValueError(f"depths must lie in [0, 100]: {self.depths}")
        if self.samples_per_cell < 1:
            raise ValueError("samples_per_cell must be >= 1")
        self.lengths = sorted({int(n) for n in self.lengths})
        self.depths = sorted({float(d) for d in self.depths})
        return self


@dataclass
class PasskeyResult:
    config: dict
    records: list[dict]

    @property
    def accuracy(self) -> float:
        return sum(r["correct"] for r in self.records) / len(self.records) if self.records else 0.0

    def accuracy_by_length(self) -> dict[int, float]:
        out: dict[int, list[bool]] = {}
        for r in self.records:
            out.setdefault(r["length"], []).append(r["correct"])
        return {k: sum(v) / len(v) for k, v in sorted(out.items())}

    def to_markdown(self) -> str:
        cells: dict[tuple[int, float], list[bool]] = {}
        for r in self.records:
            cells.setdefault((r["length"], r["depth"]), []).append(r["correct"])
        lengths = sorted({k[0] for k in cells})
        depths = sorted({k[1] for k in cells})
        rows = ["| depth \\ tokens | " + " | ".join(str(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for d in depths:
            rows.append(f"| {d:g}% | " + " | ".join(f"{sum(cells[(n, d)]) / len(cells[(n, d)]):.2f}"
                                                   for n in lengths) + " |")
        rows.append("| **mean** | " + " | ".join(f"**{a:.2f}**" for a in self.accuracy_by_length().values()) + " |")
        return "\n".join(rows)

    def to_json(self) -> dict:
        return {"summary": {"accuracy": self.accuracy,
                            "by_length": {str(k): v for k, v in self.accuracy_by_length().items()}},
                "config": self.config, "records": self.records}


def _answer_matches(model: Any, processor: Any, conversation: list[dict], device) -> tuple[bool, str]:
    """Teacher-forced greedy check of the conversation's reference answer (its last turn)."""
    prompt_ids, _ = processor.encode_conversation(conversation[:-1], 0, add_generation_prompt=True)
    target = processor.tokenizer.encode(conversation[-1]["value"], add_special_tokens=False)
    ids = torch.tensor([prompt_ids + target], dtype=torch.long, device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    n = len(prompt_ids)
    pred = logits[n - 1:n - 1 + len(target)].argmax(-1).tolist()
    return pred == target, processor.decode(pred, skip_special_tokens=True)


def run_passkey(model: Any, processor: Any, config: PasskeyConfig | None = None,
                progress: ProgressFn | None = None) -> PasskeyResult:
    """Score `model` on the passkey grid (module docstring)."""
    from training.data.passkey import fit_filler_units, random_passkey, render_passkey

    cfg = (config or PasskeyConfig()).validate()
    device = next(model.parameters()).device
    model.eval()
    rng = random.Random(cfg.seed)

    def count(conv):
        return len(processor.encode_conversation(conv, 0)[0])

    units = {n: fit_filler_units(count, n) for n in cfg.lengths}
    too_short = [n for n, u in units.items() if u < 0]
    if too_short:
        raise ValueError(f"lengths {too_short} are shorter than a passkey conversation without filler")
    cells = [(n, d) for n in cfg.lengths for d in cfg.depths for _ in range(cfg.samples_per_cell)]
    tick = Throttled(progress)
    records = []
    for i, (n, d) in enumerate(cells):
        key = random_passkey(rng, cfg.digits)
        conv = render_passkey(key, d / 100.0, units[n])
        ok, pred = _answer_matches(model, processor, conv, device)
        records.append({"length": n, "tokens": count(conv), "depth": d, "passkey": key, "prediction": pred,
                        "correct": bool(ok)})
        tick(i + 1, len(cells), f"passkey {n} tokens depth {d:g}")
    return PasskeyResult(config=asdict(cfg), records=records)


def write_passkey_outputs(result: PasskeyResult, out_dir: str) -> dict[str, str]:
    """summary.md then results.json (last: its presence marks a complete set), each atomically."""
    paths = {"summary": lio.join(out_dir, "summary.md"), "results": lio.join(out_dir, "results.json")}
    lio.write_text(paths["summary"], f"# Passkey retrieval\n\naccuracy: {result.accuracy:.4f} "
                                     f"({len(result.records)} samples)\n\n{result.to_markdown()}\n")
    lio.write_json(paths["results"], result.to_json())
    return paths
