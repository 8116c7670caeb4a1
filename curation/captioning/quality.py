"""Cheap text-quality rules for model replies: language/script check, length limit, near duplicates.

* Language: a reply is "in the target language" when most of its letters are in the target's
  script (Latin for en/fr/de/es/...; Cyrillic, Greek, Arabic, Hebrew, Devanagari, Han, Hiragana/
  Katakana, Hangul, Thai for the others). Letters are classified with `unicodedata.name`. This is a
  script check, not a language identifier: it catches a Chinese or Russian reply to an English
  prompt, not French vs English.
* Length: a caption longer than `max_chars` is cut at the last word boundary before the limit and
  flagged "truncated" (it stays usable); an empty caption is rejected.
* Near duplicates: normalised text (lowercase, punctuation and extra spaces removed) compared with
  character 3-gram Jaccard similarity.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

SCRIPTS = {
    "en": "LATIN", "fr": "LATIN", "de": "LATIN", "es": "LATIN", "it": "LATIN", "pt": "LATIN", "nl": "LATIN",
    "ru": "CYRILLIC", "uk": "CYRILLIC", "el": "GREEK", "ar": "ARABIC", "he": "HEBREW", "hi": "DEVANAGARI",
    "zh": "CJK", "ja": "CJK", "ko": "HANGUL", "th": "THAI",
}


def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return "UNKNOWN"
    if name.startswith(("CJK", "HIRAGANA", "KATAKANA")):
        return "CJK"
    return name.split(" ", 1)[0]


def script_fraction(text: str, script: str) -> tuple[float, int]:
    """(fraction of letters in `script`, number of letters)."""
    letters = [s for s in map(_script, text) if s is not None]
    if not letters:
        return 1.0, 0
    return sum(1 for s in letters if s == script) / len(letters), len(letters)


def language_problem(text: str, language: str = "en", min_fraction: float = 0.8) -> str | None:
    """A reason string if `text` is not written in `language`'s script, else None."""
    script = SCRIPTS.get(language)
    if script is None:
        return None
    frac, n = script_fraction(text, script)
    if n == 0:
        return "reply has no letters"
    if frac < min_fraction:
        return f"reply is not in the target language {language!r} (only {frac:.0%} of {n} letters are {script})"
    return None


def enforce_length(text: str, max_chars: int) -> tuple[str, bool]:
    """(text cut to at most `max_chars` at a word boundary, whether it was cut)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text, False
    cut = text[:max_chars]
    sp = cut.rfind(" ")
    if sp >= max_chars // 2:
        cut = cut[:sp]
    return cut.rstrip(), True


_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower())).strip()


def char_ngrams(text: str, n: int = 3) -> set[str]:
    t = normalise(text)
    if len(t) < n:
        return {t} if t else set()
    return {t[i : i + n] for i in range(len(t) - n + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(texts: Sequence[str], threshold: float = 0.9, n: int = 3) -> list[tuple[int, int, float]]:
    """Pairs (i, j, similarity) with i < j whose normalised texts are identical or whose character
    n-gram Jaccard similarity is >= threshold. Empty texts are skipped."""
    grams = [char_ngrams(t, n) for t in texts]
    norm = [normalise(t) for t in texts]
    out = []
    for i in range(len(texts)):
        if not norm[i]:
            continue
        for j in range(i + 1, len(texts)):
            if not norm[j]:
                continue
            s = 1.0 if norm[i] == norm[j] else jaccard(grams[i], grams[j])
            if s >= threshold:
                out.append((i, j, round(s, 4)))
    return out
