"""Cheap reference-based caption similarity, implemented here (no model, no download).

* `rouge_l(candidate, reference)`: ROUGE-L F-measure (longest common subsequence of tokens, beta=1).
* `ngram_f1(candidate, reference, n)`: clipped n-gram precision / recall / F1 (BLEU-style counting).
* `bleu(candidate, reference)`: BLEU-4 with brevity penalty and +1 smoothing of the higher orders
  (Lin & Och "smoothing 2"), one reference.
* `caption_similarity(candidate, reference)`: the three above in one dict, plus their mean "combined".

Tokens: lower-cased words and numbers (punctuation dropped). Identical texts score 1.0 on all
measures; empty texts score 0.0.
"""

from __future__ import annotations

import math
import re
from collections import Counter

__all__ = ["tokenize", "ngram_f1", "rouge_l", "bleu", "caption_similarity"]

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str | None) -> list[str]:
    return _TOKEN.findall((text or "").lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def ngram_f1(candidate: str, reference: str, n: int = 1) -> dict[str, float]:
    c, r = _ngrams(tokenize(candidate), n), _ngrams(tokenize(reference), n)
    overlap = sum((c & r).values())
    p = overlap / sum(c.values()) if c else 0.0
    rc = overlap / sum(r.values()) if r else 0.0
    f = 2 * p * rc / (p + rc) if p + rc else 0.0
    return {"precision": p, "recall": rc, "f1": f}


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    c, r = tokenize(candidate), tokenize(reference)
    lcs = _lcs(c, r)
    if lcs == 0:
        return 0.0
    p, rc = lcs / len(c), lcs / len(r)
    return 2 * p * rc / (p + rc)


def bleu(candidate: str, reference: str, max_n: int = 4) -> float:
    c, r = tokenize(candidate), tokenize(reference)
    if not c or not r:
        return 0.0
    logs = []
    for n in range(1, max_n + 1):
        cn, rn = _ngrams(c, n), _ngrams(r, n)
        total = sum(cn.values())
        match = sum((cn & rn).values())
        if n == 1:
            if match == 0:
                return 0.0
            logs.append(math.log(match / total))
        else:
            logs.append(math.log((match + 1) / (total + 1)))
    bp = 1.0 if len(c) > len(r) else math.exp(1 - len(r) / len(c))
    return bp * math.exp(sum(logs) / max_n)


def caption_similarity(candidate: str, reference: str) -> dict[str, float]:
    out = {
        "rouge_l": rouge_l(candidate, reference),
        "unigram_f1": ngram_f1(candidate, reference, 1)["f1"],
        "bigram_f1": ngram_f1(candidate, reference, 2)["f1"],
        "bleu4": bleu(candidate, reference),
    }
    out["combined"] = sum(out.values()) / len(out)
    return out
