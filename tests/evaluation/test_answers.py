"""Answer-letter extraction from free-form replies and V-NIAH answer normalisation."""

from __future__ import annotations

import pytest

from evaluation.answers import (answers_match, extract_choice, is_refusal, normalize_answer, option_letters,
                                option_text)

OPTIONS = ["A. a red square", "B. a blue circle", "C. a green triangle", "D. nothing is shown"]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", "B"),
        ("b", "B"),
        ("(C)", "C"),
        ("[D]", "D"),
        ("**A**", "A"),
        ("A.", "A"),
        ("C. a green triangle", "C"),
        ("b) a blue circle", "B"),
        ("d: nothing", "D"),
        ("The answer is (B).", "B"),
        ("The answer is B", "B"),
        ("The best answer is: C. a green triangle", "C"),
        ("Answer: D", "D"),
        ("answer:b", "B"),
        ("Best option: (d)", "D"),
        ("The correct option is c", "C"),
        ("The answer would be B", "B"),
        ("Option C", "C"),
        ("I'd pick option (a) here.", "A"),
        ("Based on the frames, the correct answer is C.", "C"),
        ("It is B because the shape is round", "B"),
        ("I think B", "B"),
        ("After watching, I believe the video shows a blue circle.", "B"),  # option content
        ("The video shows a green triangle moving to the left", "C"),
        ("A red square appears in the middle", "A"),  # content, with the article "A"
        ("Nothing is shown.", "D"),
        ("The answer is A. Not B.", "A"),  # the explicit statement wins
        ("A dog runs. B", "B"),  # "A" as an article is not an answer
        # no answer
        ("", None),
        ("   ", None),
        (None, None),
        ("I cannot determine the answer from the video.", None),
        ("I'm not able to tell; I can't see the video.", None),
        ("None of the options", None),
        ("It cannot be determined from the frames.", None),
        ("A dog runs across the field", None),
        ("maybe A or B", None),  # ambiguous
        ("The answer is A or the answer is C", None),  # ambiguous explicit statements
        ("The answer is E", None),  # not an option
        ("xyz qrs", None),
        ("a red or a blue shape", None),  # content of two options, neither exactly
    ],
)
def test_extract_choice(reply, expected):
    assert extract_choice(reply, OPTIONS) == expected


def test_option_letters_and_text():
    assert option_letters(OPTIONS) == ["A", "B", "C", "D"]
    assert option_letters(["first", "second"]) == ["A", "B"]  # no prefixes: A, B, ...
    assert option_letters(["(A) x", "(B) y", "(C) z"]) == ["A", "B", "C"]
    assert option_text("B. a blue circle") == "a blue circle"
    assert option_text("no prefix") == "no prefix"


def test_extract_choice_respects_the_option_set():
    two = ["A. yes", "B. no"]
    assert extract_choice("C", two) is None
    assert extract_choice("The answer is (B)", two) == "B"
    assert extract_choice("no", two) == "B"  # content match of a short option


def test_content_match_prefers_the_longer_option():
    opts = ["A. red", "B. dark red", "C. blue"]
    assert extract_choice("It is dark red.", opts) == "B"


def test_refusal_detection():
    assert is_refusal("I cannot tell from these frames")
    assert is_refusal("Not enough information is given.")
    assert not is_refusal("The answer is B.")


@pytest.mark.parametrize(
    "text, norm",
    [
        ("Apple.", "apple"),
        ("  The   APPLE! ", "apple"),
        ("seven", "7"),
        ("It's 42", "it s 42"),
        (None, ""),
        ("an orange", "orange"),
    ],
)
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


def test_answers_match_modes():
    assert answers_match("Apple.", "apple", "exact")
    assert not answers_match("apple pie", "apple", "exact")
    assert answers_match("apple. The frame shows", "apple", "prefix")
    assert not answers_match("the word is apple", "apple", "prefix")
    assert answers_match("the word is apple", "apple", "contains")
    assert answers_match("Seven", "7", "exact")
    assert not answers_match("pineapple", "apple", "contains")
    with pytest.raises(ValueError):
        answers_match("x", "", "exact")
    with pytest.raises(ValueError):
        answers_match("x", "y", "fuzzy")
