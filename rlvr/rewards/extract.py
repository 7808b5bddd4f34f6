"""Finding the model's final answer in a completion.

Policies (``answer_extraction``):

- ``"boxed"`` (default): the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested
  braces handled). If the completion has no box at all, a final-answer phrase at the very
  end counts (``The answer is 72.``, ``Answer: 72``, ``final answer: 72``, ``#### 72``).
  Otherwise there is no answer. A number that appears only in the reasoning never counts.
- ``"last_number"``: the last number anywhere in the completion (for tiny models trained
  from random weights, which never produce the boxed format by chance).

All scans are linear in the completion length: a 100,000-character completion costs
about a millisecond.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXTRACTION_POLICIES = ("boxed", "last_number")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# "The answer is 72.", "Final answer: 72", "**Answer:** 72", "answer = 72", "#### 72".
_PHRASE_RE = re.compile(
    r"(?:\b(?:final\s+)?answer\b(?:\s*\*\*)?\s*(?:is\s*:?|:|=)|####)(?:\s*\*\*)?",
    re.IGNORECASE,
)
_PHRASE_WINDOW = 400  # the phrase must be near the end; only this tail is searched
_PHRASE_MAX_ANSWER = 200
_SENTENCE_BREAK_RE = re.compile(r"[.!?]\s+\S")
# A number in running text: optional sign, thousands groups or plain digits, decimals,
# an optional /denominator and an optional percent sign.
_LAST_NUMBER_RE = re.compile(
    r"(?<![\d.])[-\u2212]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?(?:\s?\\?%)?",
    re.ASCII,  # ASCII digits only: int() would also accept other scripts' digits
)


@dataclass(frozen=True)
class Extraction:
    answer: str | None  # the raw answer text, None when there is none
    has_boxed: bool  # the completion contains \boxed or \fbox (a format-learning signal)


def _box_content(text: str, open_brace: int) -> str | None:
    """Content between text[open_brace] == '{' and its matching '}', or None if unclosed."""
    depth = 0
    i = open_brace
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # \{ \} \\ are not braces
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}/\\fbox{...}; None if there is none or it is unclosed.

    An unclosed last box (a truncated completion) is no answer: an earlier box was
    superseded by the model itself, so it is not credited either.
    """
    last = None
    for last in _BOX_RE.finditer(text):
        pass
    if last is None:
        return None
    return _box_content(text, last.end() - 1)


def extract_phrase(text: str) -> str | None:
    """The answer after a final-answer phrase, if that phrase ends the completion."""
    tail = text[-_PHRASE_WINDOW:]
    last = None
    for last in _PHRASE_RE.finditer(tail):
        pass
    if last is None:
        return None
    answer = tail[last.end() :].strip().strip("*_").strip()
    if not answer or "\n" in answer or len(answer) > _PHRASE_MAX_ANSWER:
        return None
    if _SENTENCE_BREAK_RE.search(answer):
        return None  # "The answer is 72. Let me check..." - the phrase does not end the text
    return answer


def extract_last_number(text: str) -> str | None:
    """The last number in the text (a leading '-' counts only when it is not subtraction)."""
    last = None
    for last in _LAST_NUMBER_RE.finditer(text):
        pass
    if last is None:
        return None
    number = last.group()
    if number[0] in "-\u2212" and last.start() > 0 and (text[last.start() - 1].isalnum() or text[last.start() - 1] in ")]}"):
        number = number[1:]  # "3-5": binary minus, the number is 5
    return number


def extract_answer(text: str, policy: str = "boxed") -> Extraction:
    """Apply an extraction policy to one completion."""
    has_boxed = _BOX_TOKEN_RE.search(text) is not None
    if policy == "boxed":
        answer = extract_boxed(text) if has_boxed else extract_phrase(text)
    elif policy == "last_number":
        answer = extract_last_number(text)
    else:
        raise ValueError(f"answer_extraction must be one of {EXTRACTION_POLICIES}, got {policy!r}")
    if answer is not None:
        answer = answer.strip()
    return Extraction(answer=answer or None, has_boxed=has_boxed)
