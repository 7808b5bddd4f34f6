"""Finding the model's final answer in a completion.

Policies (``answer_extraction``):

- ``"boxed"`` (default), in this order:
  1. the content of the last closed, non-empty ``\\boxed{...}`` / ``\\fbox{...}`` (nested
     braces handled); an unclosed last box (a truncated completion) is no answer, and an
     empty box ("put the answer in \\boxed{}") is a mention, not an answer;
  2. else the content of the last ``<answer>...</answer>`` tag (R1-V / EasyR1 prompts);
  3. else the last final-answer statement: ``The answer is 72.``, ``Answer: 72``,
     ``Answer \\[ 9 \\]``, ``The answer is therefore 72.``, ``Final Answer: The final answer
     is $12$. I hope it is correct.``, ``#### 72``; text may follow the statement; a statement
     cut off by the end of the completion (inside math, or words after the number) is no answer;
  4. else a completion that is *only* an answer: a bare number (``-5``, ``$1,000.99``) or one
     math expression with its delimiters (``$\\frac13 $``, ``\\[ 9 \\]``);
  otherwise there is no answer: a number that appears only in the reasoning never counts.
- ``"last_number"``: the last number anywhere in the completion (for tiny models trained
  from random weights, which never produce the boxed format by chance).

Text after an end-of-turn special token (``<|im_end|>``, ``<|endoftext|>``...) is dropped,
and full-width / other Unicode decimal digits read as digits, before either policy.
All scans are linear in the completion length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlvr.rewards.normalize import has_stray_words, normalize_answer, prepare_text

EXTRACTION_POLICIES = ("boxed", "last_number")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_MAX_BOXES_BACK = 100  # empty boxes skipped from the end before giving up
# Final-answer markers, found on the lower-cased text from a literal ("answer", "####",
# "答案"), so the scan is a fast substring search, not a regex tried at every position:
#   "Answer: 72", "**Final Answer:** 72", "answer = 72", "The answer is 72", "the answer to the
#   question is 72" (up to 6 plain words between "answer" and the verb), "Answer \[ 9 \]"
#   (a bare "Answer" at the start of a line or sentence, then math or a line break), "#### 72",
#   Chinese "答案是 72".
_MARKER_FIND_RE = re.compile(r"answer|####|答案")
_AFTER_ANSWER_RE = re.compile(
    r"(?:\s*\*\*)?\s*(?::|=)|(?:\s+[a-z]+){0,6}?\s+(?:is|was|would\s+be|will\s+be|should\s+be|must\s+be|has\s+to\s+be|equals|=)(?![a-z])\s*:?"
)
_AFTER_BARE_ANSWER_RE = re.compile(r"(?:\s*\*\*)?(?=\s*(?:\$|\\\(|\\\[)|[ \t*]*\n)")
_AFTER_ZH_RE = re.compile(r"\s*(?:是|为|:)")
_STATEMENT_MAX = 300  # characters of one statement
# A full stop after these does not end the statement ("The answer is approx. 72.").
_ABBREVIATION_RE = re.compile(r"(?:^|(?<=[^A-Za-z]))(?:approx|ca|e\.g|i\.e|vs|cf|resp|est)$", re.IGNORECASE)
_ANSWER_TAG_RE = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_TAG_END_RE = re.compile(r"</answer>", re.IGNORECASE)
_DISPLAY_OPEN = {"$$": "$$", "\\[": "\\]"}
_INLINE_OPEN = {"$": "$", "\\(": "\\)"}
# A number in running text: optional sign, thousands groups or plain digits, decimals,
# an optional /denominator and an optional percent sign.
_LAST_NUMBER_RE = re.compile(
    r"(?<![\d.])[-\u2212]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?(?:\s?\\?%)?",
    re.ASCII,  # digits of other scripts are mapped to ASCII first
)
_ENDS_LIKE_AN_ANSWER = frozenset("0123456789)}]$%")


@dataclass(frozen=True)
class Extraction:
    answer: str | None  # the raw answer text, None when there is none
    has_boxed: bool  # the completion contains \boxed or \fbox (a format-learning signal)
    source: str = ""  # "box" | "statement" | "answer_only" | "last_number" | "" (none)
    detail: str = ""  # why there is no answer, when there is none


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


def extract_boxed(text: str) -> tuple[str | None, str]:
    """(content of the last closed non-empty box, why none). An unclosed last box is no
    answer: an earlier box was superseded by the model itself, so it is not credited either.
    Empty boxes are skipped (a mention such as "put it in \\boxed{}")."""
    boxes = list(_BOX_RE.finditer(text))
    if not boxes:
        return None, "no box"
    for k, box in enumerate(reversed(boxes[-_MAX_BOXES_BACK:])):
        content = _box_content(text, box.end() - 1)
        if content is None:
            return (None, "the last box is unclosed (truncated)") if k == 0 else (None, "a box is unclosed")
        if content.strip():
            return content, ""
    return None, "only empty boxes"


def count_nonempty_boxes(text: str) -> int:
    """How many closed, non-empty boxes the text has (a gold with two is several values)."""
    return sum(1 for m in _BOX_RE.finditer(text) if (_box_content(text, m.end() - 1) or "").strip())


def _statement(text: str, start: int) -> tuple[str | None, bool, str]:
    """The statement that starts at ``start``: (text, terminated, why none).

    It ends at a sentence end (. ! ? then a space or the end of text) or a line break outside
    math; display math (\\[ \\], $$ $$) may span lines, inline math ($ $, \\( \\)) may not.
    """
    n = len(text)
    i = start
    while i < n and text[i] in " \t*_:":
        i += 1
    if i < n and text[i] == "\n":  # "Final Answer:\n\n72": the answer on the next line
        while i < n and text[i] in " \t\r\n*_":
            i += 1
    begin = i
    closer: str | None = None
    display = False
    depth = 0
    while i < n:
        if i - begin > _STATEMENT_MAX:
            return None, False, "final-answer statement too long"
        c = text[i]
        if closer is not None:
            if text.startswith(closer, i) and depth <= 0:
                i += len(closer)
                closer = None
                continue
            if c == "\n" and not display:
                return None, False, "inline math broken across lines"
            if c == "\\":
                i += 2
                continue
            depth += c == "{"
            depth -= c == "}"
            i += 1
            continue
        for opener, close in list(_DISPLAY_OPEN.items()) + list(_INLINE_OPEN.items()):
            if text.startswith(opener, i):
                closer, display = close, opener in _DISPLAY_OPEN
                i += len(opener)
                break
        else:
            if c == "\n":
                return text[begin:i], True, ""
            if c in ".!?" and (i + 1 == n or text[i + 1].isspace()) and not (c == "." and _ABBREVIATION_RE.search(text, max(begin, i - 8), i)):
                return text[begin:i], True, ""
            if c == "\\":
                i += 2
                continue
            i += 1
    if closer is not None:
        return None, False, "final-answer statement cut off inside math (truncated)"
    return text[begin:], False, ""


def _bare_marker_start(lower: str, p: int) -> bool:
    """Does the "answer" at p start a line or sentence (after "final", bold, '#', '>')?"""
    k = p
    while k > 0 and lower[k - 1].isspace():
        k -= 1
    if lower.endswith("final", 0, k):
        k -= 5
    else:
        k = p
    while k > 0 and lower[k - 1] in " \t*#>":
        k -= 1
    return k == 0 or lower[k - 1] in "\n.!?*#>"


def _last_marker_end(text: str) -> int | None:
    """Where the statement of the last final-answer marker starts, or None."""
    lower = text.lower()
    if len(lower) != len(text):  # a few characters change length when lower-cased
        lower = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    last = None
    for m in _MARKER_FIND_RE.finditer(lower):
        p, q = m.start(), m.end()
        if m.group() == "####":
            last = q
        elif m.group() == "答案":
            after = _AFTER_ZH_RE.match(lower, q)
            last = after.end() if after else last
        elif (p == 0 or not lower[p - 1].isalnum()) and (q == len(lower) or not lower[q].isalnum()):
            after = _AFTER_ANSWER_RE.match(lower, q)
            if after is not None:
                last = after.end()
            elif _bare_marker_start(lower, p):
                bare = _AFTER_BARE_ANSWER_RE.match(lower, q)
                last = bare.end() if bare else last
    return last


def extract_statement(text: str) -> tuple[str | None, str]:
    """(the answer of the last final-answer statement, why none)."""
    start = _last_marker_end(text)
    if start is None:
        return None, "no box and no final-answer statement"
    stmt, terminated, why = _statement(text, start)
    if stmt is None:
        return None, why
    stmt = stmt.strip().strip("*_").strip()
    if not stmt:
        return None, "empty final-answer statement"
    if not terminated:
        # Cut off by the end of the completion: it must end like an answer, not mid-sentence.
        if stmt[-1] not in _ENDS_LIKE_AN_ANSWER and has_stray_words(normalize_answer(stmt).text):
            return None, "final-answer statement cut off mid-sentence (truncated)"
    return stmt, ""


def extract_answer_tag(text: str) -> tuple[str | None, str]:
    """(content of the last <answer>...</answer>, why none): the R1-V / EasyR1 format."""
    last = None
    for last in _ANSWER_TAG_RE.finditer(text):
        pass
    if last is None:
        return None, "no answer tag"
    end = _ANSWER_TAG_END_RE.search(text, last.end())
    if end is None:
        return None, "the last <answer> tag is unclosed (truncated)"
    content = text[last.end() : end.start()].strip()
    if not content:
        return None, "empty <answer> tag"
    stated, _ = extract_statement(content)  # "<answer>The answer is 3.</answer>"
    return (stated if stated is not None else content), ""


def extract_answer_only(text: str) -> str | None:
    """The completion itself, if it is nothing but an answer (a number or one expression)."""
    s = text.strip()
    if not s or len(s) > _STATEMENT_MAX:
        return None
    if "\n" in s and not (s.startswith("$$") or s.startswith("\\[")):
        return None
    norm = normalize_answer(s)
    if not any(c.isdigit() for c in norm.text) or has_stray_words(norm.text):
        return None  # words: reasoning, not an answer ("72, 72" alone is a hedge, decided later)
    return s


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
    if policy not in EXTRACTION_POLICIES:
        raise ValueError(f"answer_extraction must be one of {EXTRACTION_POLICIES}, got {policy!r}")
    text = prepare_text(text)
    has_boxed = _BOX_TOKEN_RE.search(text) is not None
    if policy == "last_number":
        answer = extract_last_number(text)
        return Extraction(answer, has_boxed, "last_number" if answer else "", "" if answer else "no number")
    answer, why = extract_boxed(text) if has_boxed else (None, "no box")
    if answer is not None:
        return Extraction(answer.strip(), has_boxed, "box")
    if why.startswith("the last box is unclosed") or why == "a box is unclosed":
        return Extraction(None, has_boxed, "", why)
    answer, why = extract_answer_tag(text)
    if answer is not None or why != "no answer tag":
        return Extraction(answer, has_boxed, "statement" if answer is not None else "", why)
    answer, why = extract_statement(text)
    if answer is not None:
        return Extraction(answer, has_boxed, "statement")
    if why == "no box and no final-answer statement" and not has_boxed:  # "\boxed 7": a box without braces
        only = extract_answer_only(text)
        if only is not None:
            return Extraction(only, has_boxed, "answer_only")
        why = "no box, no final-answer statement, and the completion is not only an answer"
    return Extraction(None, has_boxed, "", why)
