"""JSON-schema-constrained decoding for local `transformers` models, built on xgrammar.

Real constrained decoding: at every step a grammar matcher per batch row (compiled from that row's
JSON schema against the model's tokenizer) masks every token that could not continue a
schema-valid JSON document; once a row's document is complete only end-of-sequence is allowed.
Rows may carry different schemas (e.g. a per-video `maximum` on timestamps).
"""

from __future__ import annotations

import json
import threading
from typing import Sequence

import torch
from transformers import LogitsProcessor

try:  # xgrammar is the structured-generation engine used here (also vLLM's / SGLang's)
    import xgrammar as xgr
except ImportError as _e:  # pragma: no cover - exercised only where xgrammar is missing
    xgr = None
    _IMPORT_ERROR = _e
else:
    _IMPORT_ERROR = None


def available() -> bool:
    return xgr is not None


class SchemaCompiler:
    """Compiles JSON schemas for one tokenizer, caching by schema text."""

    def __init__(self, tokenizer, vocab_size: int | None = None, stop_token_ids: Sequence[int] | None = None):
        if xgr is None:
            raise ImportError(f"xgrammar is required for constrained decoding: {_IMPORT_ERROR}")
        kw = {"stop_token_ids": list(stop_token_ids)} if stop_token_ids else {}
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, **kw)
        self.vocab_size = self.info.vocab_size
        self._compiler = xgr.GrammarCompiler(self.info)
        self._cache: dict[str, object] = {}
        self._lock = threading.Lock()

    def compile(self, schema: dict):
        text = json.dumps(schema)  # property order is kept: it is the generation order
        with self._lock:
            if text not in self._cache:
                self._cache[text] = self._compiler.compile_json_schema(text, any_whitespace=False, strict_mode=True)
            return self._cache[text]


class JSONSchemaLogitsProcessor(LogitsProcessor):
    """Per-row grammar masking for `model.generate(logits_processor=[...])`; one use per generate call.

    Rows without a schema (None) are left unconstrained.
    """

    def __init__(self, compiled: Sequence[object | None], vocab_size: int):
        self.compiled = list(compiled)
        self.vocab_size = vocab_size
        self.matchers = [xgr.GrammarMatcher(c) if c is not None else None for c in self.compiled]
        self.bitmask = xgr.allocate_token_bitmask(len(self.compiled), vocab_size)
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.matchers):
            raise RuntimeError(f"batch of {input_ids.shape[0]} rows for {len(self.matchers)} grammars")
        if self._started:
            for i, m in enumerate(self.matchers):
                if m is not None and not m.is_terminated():
                    tok = int(input_ids[i, -1])
                    if not m.accept_token(tok):
                        raise RuntimeError(f"row {i}: token {tok} rejected by the grammar")
        self._started = True
        constrained = [i for i, m in enumerate(self.matchers) if m is not None]
        if not constrained:
            return scores
        xgr.reset_token_bitmask(self.bitmask)
        for i in constrained:
            m = self.matchers[i]
            if not m.is_terminated():
                m.fill_next_token_bitmask(self.bitmask, i)
        rows = torch.tensor(constrained, dtype=torch.long)
        sub = scores[rows].float()
        # logits may be wider than the tokenizer's vocabulary (padding rows): mask those too
        width = min(sub.shape[-1], self.vocab_size)
        head = sub[:, :width].contiguous()
        xgr.apply_token_bitmask_inplace(head, self.bitmask[rows].contiguous(), vocab_size=width)
        sub[:, :width] = head
        if sub.shape[-1] > width:
            sub[:, width:] = float("-inf")
        scores = scores.clone()
        scores[rows] = sub.to(scores.dtype)
        return scores
