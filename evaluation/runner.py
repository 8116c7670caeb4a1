"""Run a LongVILA checkpoint as a benchmark answerer (single process).

`ModelRunner(model, processor)`:
* `runner(frames, prompt) -> str`: greedy generation (`model.generate`, do_sample=False) of at most
  `max_new_tokens` tokens after the prompt; the reply is the decoded text up to `<|im_end|>`.
* `runner.greedy_continuation(frames, prompt, target) -> str`: one teacher-forced forward over
  prompt + target; the arg-max token at each target position, decoded. It equals the first
  len(target tokens) tokens of greedy decoding whenever those match the target (the V-NIAH criterion),
  and needs a single prefill, which is what the MM-SP sharded runner (`evaluation.sharded`) also
  computes, so both give the same decision.
* `runner.target_logits(frames, prompt, target)`: the logits rows used above (for comparisons). The
  visual embeddings of each frame object are cached (`FrameFeatureCache`), so a V-NIAH grid encodes
  every haystack frame once instead of once per sample (cache_frames=False turns it off).
* `runner.target_logprobs(frames, prompt, target)`: per-token log-probabilities of the target (its
  log-likelihood is their sum), from the same rows.
* `runner.choice_scores(frames, prompt, letters)`: the logit of each option letter as the first reply
  token (VideoMME `scoring="option_logits"`: multiple choice by likelihood, always yields a letter).

`load_runner(checkpoint)` loads a checkpoint directory (or hub id) with
`training.model.load_checkpoint`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from longvila.errors import InputError

__all__ = ["ModelRunner", "FrameFeatureCache", "load_runner", "build_inputs", "append_target", "letter_scores",
           "prompt_ids"]

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


def prompt_ids(processor: Any, num_frames: int, prompt: str) -> list[int]:
    """Token ids of `build_inputs` without preprocessing any pixels."""
    conv = [{"from": "human", "value": f"{VIDEO_TOKEN}\n{prompt}"}]
    ids, _ = processor.encode_conversation(conv, num_frames, add_generation_prompt=True)
    return ids


class FrameFeatureCache:
    """Visual embeddings per frame object (LongVA's V-NIAH also embeds the haystack once): a V-NIAH
    grid re-uses the same haystack frames in every sample, so each frame goes through the vision
    tower and projector once. Keyed by the frame object's identity (a reference is kept, so the id
    stays valid); least-recently-used entries beyond `max_frames` are dropped."""

    def __init__(self, max_frames: int = 4096):
        from collections import OrderedDict

        self.max_frames = int(max_frames)
        self._d: "OrderedDict[int, tuple[Any, torch.Tensor]]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def features(self, model: Any, processor: Any, frames: Sequence[Any], device: torch.device) -> torch.Tensor:
        missing = list({id(f): f for f in frames if id(f) not in self._d}.values())
        self.misses += len(missing)
        self.hits += len(frames) - len(missing)
        if missing:
            pix = processor.preprocess_frames(missing).to(device)
            with torch.no_grad():
                feats = model.get_image_features(pix)
            for f, t in zip(missing, feats):
                self._d[id(f)] = (f, t)
        out = []
        for f in frames:
            self._d.move_to_end(id(f))
            out.append(self._d[id(f)][1])
        while len(self._d) > self.max_frames:
            self._d.popitem(last=False)
        return torch.stack(out)

    def clear(self) -> None:
        self._d.clear()


class ModelRunner:
    def __init__(self, model: Any, processor: Any, max_new_tokens: int = 16, device: str | None = None,
                 cache_frames: bool = True, max_cached_frames: int = 4096):
        self.model = model.eval()
        self.processor = processor
        self.max_new_tokens = int(max_new_tokens)
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.cache = FrameFeatureCache(max_cached_frames) if cache_frames else None

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
        """[len(target_ids), vocab] logits predicting each target token (teacher forcing). The LM head runs on
        those rows only (``logits_to_keep``), never on the whole prompt."""
        keep = len(target_ids) + 1  # the rows from the last prompt token on; the very last row predicts nothing
        if self.cache is not None:
            ids = prompt_ids(self.processor, len(frames), prompt)
            input_ids = torch.tensor([ids + list(target_ids)], dtype=torch.long, device=self.device)
            feats = self.cache.features(self.model, self.processor, list(frames), self.device)
            out = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), image_features=feats,
                             logits_to_keep=keep)
        else:
            batch, _ = append_target(self._to(build_inputs(self.processor, frames, prompt)), target_ids)
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"], logits_to_keep=keep)
        return out.logits[0, :-1].float()

    def target_logprobs(self, frames: Sequence[Any], prompt: str, target: str) -> torch.Tensor:
        """[len(target tokens)] log-probability of each target token given the prompt and the target's
        earlier tokens (teacher forcing); their sum is the answer's log-likelihood."""
        ids = self.target_ids(target)
        rows = torch.log_softmax(self.target_logits_ids(frames, prompt, ids), dim=-1)
        return rows.gather(1, torch.tensor(ids, device=rows.device)[:, None]).squeeze(1)

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
