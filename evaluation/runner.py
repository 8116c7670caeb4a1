"""Run a LongVILA checkpoint as a benchmark answerer (single process).

`ModelRunner(model, processor)`:
* `runner(frames, prompt) -> str`: greedy generation (`model.generate`, do_sample=False) of at most
  `max_new_tokens` tokens after the prompt; the reply is the decoded text up to `<|im_end|>`.
* `runner.greedy_continuation(frames, prompt, target) -> str`: one teacher-forced forward over
  prompt + target; the arg-max token at each target position, decoded. It equals the first
  len(target tokens) tokens of greedy decoding whenever those match the target (the V-NIAH criterion),
  and needs a single prefill, which is what the MM-SP sharded runner (`evaluation.sharded`) also
  computes, so both give the same decision.
* `runner.target_logits(frames, prompt, target)`: the logits rows used above (for comparisons).
* `runner.choice_scores(frames, prompt, letters)`: the logit of each option letter as the first reply
  token (VideoMME `scoring="option_logits"`: multiple choice by likelihood, always yields a letter).

`load_runner(checkpoint)` loads a checkpoint directory (or hub id) with
`training.model.load_checkpoint`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from longvila.errors import InputError

__all__ = ["ModelRunner", "load_runner", "build_inputs", "append_target", "letter_scores"]

VIDEO_TOKEN = "<video>"


def build_inputs(processor: Any, frames: Sequence[Any], prompt: str) -> dict:
    """Processor batch for one sample: the human turn "<video>\\n{prompt}" and the assistant header
    (generation prompt), no padding."""
    conv = [{"from": "human", "value": f"{VIDEO_TOKEN}\n{prompt}"}]
    return processor(conversations=[conv], frames=[list(frames)], add_generation_prompt=True)


def append_target(batch: dict, target_ids: Sequence[int]) -> tuple[dict, torch.Tensor]:
    """Append `target_ids` to a one-sample batch; returns (batch, positions) where the logits row at
    each position predicts the corresponding target token."""
    ids = batch["input_ids"]
    n = ids.shape[1]
    tgt = torch.tensor([list(target_ids)], dtype=ids.dtype, device=ids.device)
    out = dict(batch)
    out["input_ids"] = torch.cat([ids, tgt], 1)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    out.pop("labels", None)
    return out, torch.arange(n - 1, n - 1 + len(target_ids), device=ids.device)


class ModelRunner:
    def __init__(self, model: Any, processor: Any, max_new_tokens: int = 16, device: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.max_new_tokens = int(max_new_tokens)
        self.device = torch.device(device) if device else next(model.parameters()).device

    def _to(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def target_ids(self, target: str) -> list[int]:
        ids = self.processor.tokenizer.encode(target, add_special_tokens=False)
        if not ids:
            raise InputError("target", "empty target answer")
        return ids

    @torch.no_grad()
    def __call__(self, frames: Sequence[Any], prompt: str, max_new_tokens: int | None = None) -> str:
        batch = self._to(build_inputs(self.processor, frames, prompt))
        n = batch["input_ids"].shape[1]
        eos = self.processor.eos_token_id
        out = self.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"], max_new_tokens=max_new_tokens or self.max_new_tokens,
            do_sample=False, eos_token_id=eos, pad_token_id=self.processor.pad_token_id,
        )
        new = out[0, n:].tolist()
        if eos in new:
            new = new[: new.index(eos)]
        return self.processor.decode(new, skip_special_tokens=True).strip()

    @torch.no_grad()
    def target_logits_ids(self, frames: Sequence[Any], prompt: str, target_ids: Sequence[int]) -> torch.Tensor:
        """[len(target_ids), vocab] logits predicting each target token (teacher forcing)."""
        batch, pos = append_target(self._to(build_inputs(self.processor, frames, prompt)), target_ids)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         pixel_values=batch["pixel_values"])
        return out.logits[0, pos].float()

    def target_logits(self, frames: Sequence[Any], prompt: str, target: str) -> torch.Tensor:
        return self.target_logits_ids(frames, prompt, self.target_ids(target))

    def greedy_continuation(self, frames: Sequence[Any], prompt: str, target: str) -> str:
        logits = self.target_logits(frames, prompt, target)
        return self.processor.decode(logits.argmax(-1).tolist(), skip_special_tokens=True)

    @torch.no_grad()
    def next_token_logits(self, frames: Sequence[Any], prompt: str) -> torch.Tensor:
        """[vocab] logits of the first reply token."""
        batch = self._to(build_inputs(self.processor, frames, prompt))
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         pixel_values=batch["pixel_values"], logits_to_keep=1)
        return out.logits[0, -1].float()

    def choice_scores(self, frames: Sequence[Any], prompt: str, letters: Sequence[str]) -> dict[str, float]:
        """Logit of each option letter as the first reply token (multiple choice by likelihood)."""
        return letter_scores(self.next_token_logits(frames, prompt), self.processor.tokenizer, letters)

    @torch.no_grad()
    def generate_ids(self, frames: Sequence[Any], prompt: str, max_new_tokens: int) -> list[int]:
        """Greedy token ids after the prompt (no eos truncation)."""
        batch = self._to(build_inputs(self.processor, frames, prompt))
        n = batch["input_ids"].shape[1]
        out = self.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"], max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=self.processor.pad_token_id,
        )
        return out[0, n:].tolist()


def letter_scores(logits: torch.Tensor, tokenizer: Any, letters: Sequence[str]) -> dict[str, float]:
    out = {}
    for letter in letters:
        ids = tokenizer.encode(letter, add_special_tokens=False)
        if not ids:
            raise ValueError(f"option letter {letter!r} encodes to no token")
        out[letter] = float(logits[ids[0]])
    return out


def load_runner(checkpoint: str, max_new_tokens: int = 16, device: str = "cpu") -> ModelRunner:
    from training.model import load_checkpoint

    model, processor = load_checkpoint(str(checkpoint), device=device)
    return ModelRunner(model, processor, max_new_tokens=max_new_tokens)
