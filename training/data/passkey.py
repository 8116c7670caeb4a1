"""Long-text passkey retrieval set (stage-4 smoke data), generated locally and deterministically.

A record holds only the parameters (passkey, needle depth, fill); the text is rendered for the target
length at training time (`render_passkey`), so the same records serve every context-extension phase:
the haystack of filler sentences is sized so that the whole conversation fills `fill` x `max_length`
tokens (fill < 1 mixes shorter samples in, which keeps short contexts working after an extension).
"""

from __future__ import annotations

import random
from typing import Callable

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about it.")
FILLER_SENTENCES = ("The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ",
                    "There and back again. ")


def filler(n: int, offset: int = 0) -> str:
    """`n` filler sentences (the unit in which the haystack grows)."""
    return "".join(FILLER_SENTENCES[(offset + i) % len(FILLER_SENTENCES)] for i in range(n))
QUESTION = "What is the pass key?"


def random_passkey(rng: random.Random, digits: int = 5) -> str:
    """A key of `digits` digits (no leading zero unless it is a single digit)."""
    if digits < 1:
        raise ValueError(f"a passkey needs at least one digit, got {digits}")
    return str(rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1))


def passkey_records(num_samples: int, seed: int = 0, digits: int = 5, min_fill: float = 1.0) -> list[dict]:
    """`num_samples` records {sample_id, passkey, depth, fill}: a key of `digits` digits, the needle's
    depth in [0, 1], and the share of the target length the rendered sample fills (uniform in
    [min_fill, 1]; 1 = the whole max_length)."""
    rng = random.Random(seed)
    out = []
    for i in range(num_samples):
        out.append({
            "sample_id": f"passkey-{i:05d}",
            "passkey": random_passkey(rng, digits),
            "depth": round(rng.random(), 4),
            "fill": 1.0 if min_fill >= 1.0 else round(rng.uniform(min_fill, 1.0), 4),
        })
    return out


def needle(passkey: str) -> str:
    return f"The pass key is {passkey}. Remember it. {passkey} is the pass key. "


def render_passkey(passkey: str, depth: float, filler_units: int) -> list[dict]:
    """LLaVA-format conversation: long haystack with the needle at `depth`, question, answer."""
    at = int(round(depth * filler_units))
    hay = filler(at) + needle(passkey) + filler(filler_units - at, offset=at)
    return [
        {"from": "human", "value": f"{INTRO} {hay}\n{QUESTION}"},
        {"from": "gpt", "value": f"The pass key is {passkey}."},
    ]


def fit_filler_units(count_tokens: Callable[[list[dict]], int], max_length: int) -> int:
    """Largest number of filler sentences whose rendered conversation fits in `max_length` tokens."""
    base = count_tokens(render_passkey("00000", 0.5, 0))
    if base > max_length:
        return -1
    per = max(1, count_tokens(render_passkey("00000", 0.5, 4)) - base) / 4.0
    n = max(0, int((max_length - base) / per))
    # correct the estimate (BPE merges make the per-unit cost slightly variable)
    while n > 0 and count_tokens(render_passkey("00000", 0.5, n)) > max_length:
        n -= 1
    while count_tokens(render_passkey("00000", 0.5, n + 1)) <= max_length:
        n += 1
    return n
