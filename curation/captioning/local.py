"""Local `transformers` backend: any VLM (AutoProcessor + AutoModelForImageTextToText) or LLM
(AutoTokenizer + AutoModelForCausalLM) checkpoint, from a local path or a hub id.

Requests are batched (left padding), one `generate` call per batch; JSON-schema requests are
decoded under a grammar (see `constrained.py`), so the reply is schema-valid by construction
unless it runs out of tokens.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import torch

from longvila.errors import InputError

from . import constrained
from .types import BAD_INPUT, ChatReply, ChatRequest, image_parts, to_pil


def _is_vision_config(cfg) -> bool:
    return getattr(cfg, "vision_config", None) is not None


def _template_messages(messages: list[dict]) -> list[dict]:
    """Strip image payloads (the chat template only needs `{"type": "image"}` placeholders)."""
    out = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            c = [{"type": "image"} if p.get("type") == "image" else {"type": "text", "text": p.get("text", "")}
                 for p in c]
        out.append({"role": m["role"], "content": c})
    return out


def _text_only(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            c = "".join(p.get("text", "") for p in c if p.get("type") == "text")
        out.append({"role": m["role"], "content": c})
    return out


class LocalChatBackend:
    """A local model behind the `ChatBackend` interface.

    kind: "auto" (vision model if the config has a `vision_config`), "vlm" or "llm".
    batch_size: requests per `generate` call. Thread-safe (one generate at a time).
    num_threads: torch intra-op threads while generating (restored afterwards); None = torch's
    setting. Tiny models on a busy CPU run far faster with 1 thread (no spin-waiting workers).
    """

    def __init__(
        self,
        model: str,
        *,
        kind: str = "auto",
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str | None = None,
        model_id: str | None = None,
        num_threads: int | None = None,
    ):
        from transformers import AutoConfig

        self.model_path = str(model)
        self.model_id = model_id or self.model_path
        self.batch_size = max(1, int(batch_size))
        self.num_threads = int(num_threads) if num_threads else None
        self.device = torch.device(device)
        self._lock = threading.Lock()
        try:
            cfg = AutoConfig.from_pretrained(self.model_path)
        except (OSError, ValueError) as e:
            raise InputError(self.model_path, f"cannot load model config: {e}") from e
        self.kind = ("vlm" if _is_vision_config(cfg) else "llm") if kind == "auto" else kind
        torch_dtype = getattr(torch, dtype) if dtype else None
        kw = {"dtype": torch_dtype} if torch_dtype is not None else {}
        if self.kind == "vlm":
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self.processor = AutoProcessor.from_pretrained(self.model_path)
            self.tokenizer = self.processor.tokenizer
            self.model = AutoModelForImageTextToText.from_pretrained(self.model_path, **kw)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self.model = AutoModelForCausalLM.from_pretrained(self.model_path, **kw)
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self.pad_id = self.tokenizer.pad_token_id
        self._schemas = None

    # -- constrained decoding ------------------------------------------------------------------
    def _compiler(self):
        if self._schemas is None:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            self._schemas = constrained.SchemaCompiler(self.tokenizer, vocab_size=vocab,
                                                       stop_token_ids=sorted(self.eos_ids))
        return self._schemas

    # -- generation ------------------------------------------------------------------------------
    def chat(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        replies: list[ChatReply | None] = [None] * len(requests)
        # group by decoding settings so that one generate call serves a whole batch
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.seed, r.json_schema is not None), []).append(i)
        with self._lock:
            for idx in groups.values():
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s : s + self.batch_size]
                    for i, rep in zip(chunk, self._generate_or_isolate([requests[i] for i in chunk])):
                        replies[i] = rep
        return replies  # type: ignore[return-value]

    def _generate_or_isolate(self, batch: Sequence[ChatRequest]) -> list[ChatReply]:
        """Generate a batch; if it fails, retry its requests one by one so that one bad request
        (an undecodable frame, a prompt the template rejects) fails alone, as a failed reply."""
        try:
            return self._generate(batch)
        except (ValueError, TypeError, OSError, RuntimeError) as e:
            if len(batch) == 1:
                return [ChatReply(text="", finish_reason="error", error=f"{type(e).__name__}: {e}"[:500],
                                  error_kind=BAD_INPUT)]
            return [self._generate_or_isolate([r])[0] for r in batch]

    def _encode(self, batch: Sequence[ChatRequest]):
        if self.kind == "vlm":
            texts, images = [], []
            for r in batch:
                texts.append(
                    self.processor.apply_chat_template(
                        _template_messages(r.messages), add_generation_prompt=True, tokenize=False
                    )
                )
                images.append([to_pil(im) for im in image_parts(r.messages)])
            if any(images):
                if not all(images):
                    raise ValueError("a batch mixes requests with and without images")
                enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
            else:
                enc = self.processor(text=texts, padding=True, return_tensors="pt")
        else:
            texts = [
                self.tokenizer.apply_chat_template(_text_only(r.messages), add_generation_prompt=True, tokenize=False)
                for r in batch
            ]
            enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in enc.items()}

    def _generate(self, batch: Sequence[ChatRequest]) -> list[ChatReply]:
        t0 = time.perf_counter()
        enc = self._encode(batch)
        max_new = max(r.max_new_tokens for r in batch)
        kwargs: dict = {"max_new_tokens": max_new, "pad_token_id": self.pad_id, "eos_token_id": sorted(self.eos_ids)}
        temp = batch[0].temperature
        if temp and temp > 0:
            kwargs.update(do_sample=True, temperature=float(temp), top_k=0, top_p=1.0)
            if batch[0].seed is not None:
                torch.manual_seed(int(batch[0].seed))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if any(r.json_schema is not None for r in batch):
            comp = self._compiler()
            compiled = [comp.compile(r.json_schema) if r.json_schema is not None else None for r in batch]
            kwargs["logits_processor"] = [constrained.JSONSchemaLogitsProcessor(compiled, comp.vocab_size)]
        prev_threads = torch.get_num_threads()
        if self.num_threads and self.num_threads != prev_threads:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
        finally:
            if torch.get_num_threads() != prev_threads:
                torch.set_num_threads(prev_threads)
        prompt_len = enc["input_ids"].shape[1]
        gen = out[:, prompt_len:].cpu()
        dt = time.perf_counter() - t0
        replies = []
        for row, r in enumerate(batch):
            ids = gen[row].tolist()
            n, stopped = 0, False
            for t in ids:
                if t in self.eos_ids:
                    stopped = True
                    break
                n += 1
            # honour each request's own max_new_tokens inside a batch with a larger maximum
            if n > r.max_new_tokens:
                n, stopped = r.max_new_tokens, False
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
            prompt_tokens = int(enc["attention_mask"][row].sum()) if "attention_mask" in enc else prompt_len
            replies.append(
                ChatReply(
                    text=text,
                    completion_tokens=n + (1 if stopped else 0),
                    prompt_tokens=prompt_tokens,
                    finish_reason="stop" if stopped else "length",
                    latency_s=dt,
                )
            )
        return replies
