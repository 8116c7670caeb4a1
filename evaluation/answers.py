"""Answer extraction and normalisation for free-form model replies.

`extract_choice(reply, options)` turns a free-form reply to a multiple-choice question into the
option letter it names, or None when the reply names no option, names several, or refuses.
Handled styles: "B", "(B)", "b) ...", "B. text", "The answer is (B).", "Answer: B", "Option C",
"the correct option is c", a reply that repeats one option's content ("a red square"), and
refusals ("I cannot tell", "None of the options") -> None.

`normalize_answer(text)` is the V-NIAH normalisation: lower case, punctuation and articles removed,
whitespace collapsed, number words mapped to digits ("seven" -> "7").
"""

from __future__ import annotations

import re
import string
from typing import Sequence

__all__ = [
    "option_letters",
    "option_text",
    "extract_choice",
    "normalize_answer",
    "answers_match",
    "is_refusal",
]

_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[\.\):：]\s*(.*)$", re.S)

_REFUSAL = re.compile(
    r"\b(i\s+(?:can\s*not|can't|cannot|am\s+unable\s+to|am\s+not\s+able\s+to|don't|do\s+not)\s+"
    r"(?:determine|tell|answer|know|see|say|identify|be\s+sure)"
    r"|unable\s+to\s+(?:determine|answer|tell)"
    r"|not\s+(?:enough|sufficient)\s+information"
    r"|none\s+of\s+(?:the|these|them)(?:\s+(?:options|choices|answers))?"
    r"|no\s+(?:correct\s+)?(?:answer|option)\s+(?:is\s+)?(?:correct|given|applies|fits)"
    r"|cannot\s+be\s+determined"
    r"|it\s+is\s+(?:impossible|not\s+possible)\s+to)",
    re.I,
)

# explicit statements, tried in order; group 1 is the letter
_EXPLICIT = [
    # "answer is (B)", "best answer: B", "correct option is c", "answer would be B"
    re.compile(
        r"\b(?:answer|option|choice)s?\s*(?:is|would\s+be|should\s+be|=|:|：)\s*(?:option|choice)?\s*"
        r"[\(\[\"'*]*\s*([A-Za-z])\s*[\)\]\"'*]*(?=[\s\.\,\):;!]|$)",
        re.I,
    ),
    # "Option C", "choice (b)"
    re.compile(r"\b(?:option|choice)\s*[\(\[]?\s*([A-Za-z])\s*[\)\]]?(?=[\s\.\,\):;!]|$)", re.I),
]
# the reply starts with the letter: "B", "(B)", "b) text", "B. text", "B: text", "**B**"
_LEADING = re.compile(r"^[\s\*\"'\[]*\(?([A-Za-z])(?:\s*[\)\]\.:：,\*\"']|\s*$)")
# a bracketed letter anywhere: "... is (B) ..."
_BRACKETED = re.compile(r"[\(\[]([A-Za-z])[\)\]]")
# an upper-case letter standing alone as a word
_STANDALONE = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")


def option_letters(options: Sequence[str]) -> list[str]:
    """Letters of the options: from their "A. ..." prefixes, else A, B, C, ... in order."""
    letters = []
    for i, opt in enumerate(options):
        m = _OPTION_PREFIX.match(str(opt))
        letters.append(m.group(1).upper() if m else string.ascii_uppercase[i])
    return letters


def option_text(option: str) -> str:
    """The content of an option without its "A. " prefix."""
    m = _OPTION_PREFIX.match(str(option))
    return (m.group(2) if m else str(option)).strip()


def _norm_text(s: str) -> str:
    s = s.lower()
    s = re.sub(r"[^\w\s]", " ", s)
    return re.sub(r"\s+", " ", s).strip()


def is_refusal(reply: str) -> bool:
    return bool(_REFUSAL.search(reply or ""))


def _unique(letters: list[str], valid: set[str]) -> str | None:
    found = {x.upper() for x in letters if x.upper() in valid}
    return found.pop() if len(found) == 1 else None


def _content_match(reply: str, options: Sequence[str], letters: list[str]) -> str | None:
    r = _norm_text(reply)
    if not r:
        return None
    hits = []
    for letter, opt in zip(letters, options):
        t = _norm_text(option_text(opt))
        if t and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", r):
            hits.append((len(t), letter, t))
    if not hits:
        return None
    hits.sort(reverse=True)
    # drop options whose text is contained in a longer matching option ("red" inside "dark red")
    kept = [h for h in hits if not any(h is not o and h[2] in o[2] for o in hits)]
    return kept[0][1] if len(kept) == 1 else None


def extract_choice(reply: str | None, options: Sequence[str]) -> str | None:
    """The option letter a free-form reply picks, or None (no answer, ambiguous, or a refusal)."""
    if reply is None:
        return None
    text = str(reply).strip()
    if not text:
        return None
    letters = option_letters(options)
    valid = set(letters)

    # 1. explicit statements ("The answer is (B)", "Option C"): the last explicit statement wins
    #    over earlier reasoning, but several different explicit letters are ambiguous
    for pat in _EXPLICIT:
        found = [m.group(1) for m in pat.finditer(text) if m.group(1).upper() in valid]
        if found:
            distinct = {f.upper() for f in found}
            if len(distinct) == 1:
                return distinct.pop()
            return None
    # 2. a leading letter "B", "b) ...", "(C) ...". An upper-case "A" followed by a space and a word
    #    is the article ("A dog runs"); the regex only accepts a delimiter or the end of the reply.
    m = _LEADING.match(text)
    if m and m.group(1).upper() in valid:
        letter = m.group(1)
        if letter.isupper() or len(text) == 1 or re.match(r"^[\s\*\"'\[]*\(?[a-z]\s*[\)\]\.:]", text):
            return letter.upper()
    # 3. refusals ("I cannot determine ...", "None of the options")
    if is_refusal(text):
        return None
    # 4. the reply repeats exactly one option's content
    hit = _content_match(text, options, letters)
    if hit:
        return hit
    # 5. a bracketed letter "(B)" anywhere, or a single distinct upper-case letter standing alone
    hit = _unique(_BRACKETED.findall(text), valid)
    if hit:
        return hit
    standalone = [m.group(1) for m in _STANDALONE.finditer(text) if not _is_word_use(text, m)]
    return _unique(standalone, valid)


def _is_word_use(text: str, m: re.Match) -> bool:
    """True for the article "A" opening a sentence ("A dog ...") and the pronoun "I" ("I think")."""
    letter = m.group(1)
    after = text[m.end():]
    if letter == "I":
        return bool(re.match(r"\s+[a-z]|'", after))
    if letter == "A":
        before = text[: m.start()].rstrip()
        return (not before or before[-1] in ".!?\n") and bool(re.match(r"\s+[a-z]", after))
    return False


_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


def normalize_answer(text: str | None) -> str:
    """Lower-case, drop punctuation and articles, map number words to digits, collapse spaces."""
    if text is None:
        return ""
    s = str(text).lower().replace("\u2019", "'")
    s = re.sub(r"[^\w\s]", " ", s)
    words = [_NUMBER_WORDS.get(w, w) for w in s.split() if w not in _ARTICLES]
    return " ".join(words)


def answers_match(prediction: str | None, answer: str, mode: str = "exact") -> bool:
    """Normalised match of a reply against a reference answer.

    mode="exact": the normalised reply equals the normalised answer;
    mode="prefix": the normalised reply starts with the answer's words (a greedy reply that
    continues after the answer, e.g. "apple. The frame shows ...");
    mode="contains": the answer's words appear as a contiguous run anywhere in the reply.
    """
    p, a = normalize_answer(prediction), normalize_answer(answer)
    if not a:
        raise ValueError("empty reference answer")
    if mode == "exact":
        return p == a
    pw, aw = p.split(), a.split()
    if mode == "prefix":
        return pw[: len(aw)] == aw
    if mode == "contains":
        return any(pw[i : i + len(aw)] == aw for i in range(len(pw) - len(aw) + 1))
    raise ValueError(f"unknown match mode {mode!r}")
