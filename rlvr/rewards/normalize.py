"""Text clean-up shared by golds and answers: wrappers, spacing, units, percent signs.

Everything here is linear-time string work on text that is already bounded in length
(the verifier rejects longer answers before calling in), so it cannot hang.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Characters that mean the same thing as ASCII ones in a number.
_TRANSLATE = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u2012": "-",  # figure dash
        "\u2013": "-",  # en dash
        "\ufe63": "-",  # small hyphen-minus
        "\uff0d": "-",  # fullwidth hyphen-minus
        "\u00a0": " ",  # no-break space
        "\u2007": " ",  # figure space
        "\u2008": " ",  # punctuation space
        "\u2009": " ",  # thin space
        "\u200a": " ",  # hair space
        "\u202f": " ",  # narrow no-break space
        "\u3000": " ",  # ideographic space
        "\uff05": "%",  # fullwidth percent
        "\u066a": "%",  # arabic percent
        "\t": " ",
        "\n": " ",
        "\r": " ",
        "°": "",  # degrees are a unit
        "€": "",
        "£": "",
        "¥": "",
    }
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DROP_RE = re.compile(
    r"\\\$|\$|\\[()\[\]]|\\(?:displaystyle|textstyle|scriptstyle|left|right|big|Big|bigl|bigr|Bigl|Bigr)(?![A-Za-z])|\\!"
)
_SPACE_CMD_RE = re.compile(r"\\[,;: ]|\\q?quad(?![A-Za-z])|~")
_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mathsf|mbox|hbox|operatorname|boxed|fbox)\s*\{([^{}]*)\}"
)
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])")
_PERCENT_TAIL_RE = re.compile(r"\s*(?:\\?%|\bper\s*cent\b|\bpercent\b|\bpct\b)\s*$", re.IGNORECASE)
_TRAILING_PUNCT = " .,;:!?"
_LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z ]{0,30}:\s*")
_APPROX_RE = re.compile(r"\\approx(?![A-Za-z])|≈|\\simeq(?![A-Za-z])")

# A trailing unit: words (letters, optional trailing dot, optional ^2 / ^{-1}) joined by
# spaces, '/', '*' or \cdot. "72 apples", "72 cm^2", "9.8 m/s^2", "72 red cubes".
_UNIT_PIECE = r"[A-Za-z]+\.?(?:\s*\^\s*(?:\{\s*-?\d\s*\}|-?\d))?"
_UNIT_TAIL_RE = re.compile(
    rf"(?<![\\A-Za-z])(?:{_UNIT_PIECE})(?:\s*(?:/|\*|\\cdot|\s)\s*(?:{_UNIT_PIECE}))*\s*$"
)
_WORD_RE = re.compile(r"[A-Za-z]+")
_ENDS_WITH_COMMAND_RE = re.compile(r"\\[A-Za-z]+$")
# Words that are mathematics, not units: never stripped, and allowed through to math-verify.
MATH_WORDS = frozenset(
    "sqrt pi e i sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp "
    "inf infty frac dfrac tfrac cdot times div mod binom choose".split()
)
# One-letter units accepted after a number ("5 m", "3 g", "2h"); any other single letter
# is a variable ("2x", "3i") and the answer goes to math-verify.
_ONE_LETTER_UNITS = frozenset("m g s h l L K N J W V".split())


@dataclass(frozen=True)
class NormalizedAnswer:
    """An answer reduced to the expression that is compared: ``text`` without its percent sign."""

    text: str
    percent: bool

    def key(self) -> str:
        return self.text + ("%" if self.percent else "")


def clean_latex(text: str) -> str:
    """Drop math delimiters, sizing/spacing commands and \\text-like wrappers; unify dashes/spaces."""
    s = _CONTROL_RE.sub(" ", text.translate(_TRANSLATE))
    s = _DROP_RE.sub("", s)
    s = s.replace("{,}", ",")
    s = _SPACE_CMD_RE.sub(" ", s)
    for _ in range(4):  # nested \text{\textbf{..}}: a few rounds, never unbounded
        s, n = _TEXT_CMD_RE.subn(r" \1 ", s)
        if n == 0:
            break
    s = _DEGREE_RE.sub(" ", s)
    return " ".join(s.split())


def split_percent(s: str) -> tuple[str, bool]:
    """Remove one trailing percent sign (or the word percent); say whether there was one."""
    m = _PERCENT_TAIL_RE.search(s)
    if m is None:
        return s, False
    return s[: m.start()].rstrip(_TRAILING_PUNCT), True


def strip_units(s: str) -> tuple[str, bool]:
    """Remove trailing unit words after a number; returns (rest, percent_word_seen)."""
    offset = max(0, len(s) - 200)  # units are short; never scan a long answer quadratically
    m = _UNIT_TAIL_RE.search(s, offset)
    if m is None:
        return s, False
    rest = s[: m.start()].rstrip()
    if not rest or not (rest[-1].isdigit() or rest[-1] in "})%" or _ENDS_WITH_COMMAND_RE.search(rest)):
        return s, False
    words = _WORD_RE.findall(m.group())
    if any(w.lower() in MATH_WORDS for w in words):
        return s, False
    if len(words) == 1 and len(words[0]) == 1 and words[0] not in _ONE_LETTER_UNITS:
        return s, False
    percent = any(w.lower() in ("percent", "pct") for w in words)
    return rest, percent


def _last_equation_side(s: str) -> str:
    """``x = 5`` -> ``5``; ``\\frac13 \\approx 0.333`` -> ``\\frac13`` (the exact side)."""
    if "=" in s and not any(op in s for op in ("<", ">", "\\le", "\\ge", "\\ne")):
        s = s.rsplit("=", 1)[1].strip()
    if _APPROX_RE.search(s):
        parts = [p.strip() for p in _APPROX_RE.split(s)]
        s = next((p for p in parts if any(c.isdigit() for c in p)), parts[-1])
    return s


def _unwrap_braces(s: str) -> str:
    while len(s) >= 2 and s[0] == "{" and s[-1] == "}":
        depth = 0
        for idx, c in enumerate(s):
            depth += c == "{"
            depth -= c == "}"
            if depth == 0 and idx != len(s) - 1:
                return s  # "{1}{2}": the first brace closes early
        s = s[1:-1].strip()
    return s


def normalize_answer(raw: str) -> NormalizedAnswer:
    """Reduce an extracted answer to the expression to compare, plus its percent flag.

    Order: clean LaTeX -> keep the right side of the last '=' -> drop a leading "Label:" ->
    drop trailing punctuation -> drop trailing unit words -> split off a percent sign.
    """
    s = clean_latex(raw)
    s = _last_equation_side(s)
    s = _LABEL_RE.sub("", s)
    s = _unwrap_braces(s.rstrip(_TRAILING_PUNCT).strip())
    s, percent = split_percent(s)
    s, percent_word = strip_units(s)
    s = s.rstrip(_TRAILING_PUNCT).strip()
    if not percent:
        s, percent = split_percent(s)  # "50% of them": the unit came after the sign
    s = _unwrap_braces(s.rstrip(_TRAILING_PUNCT).strip())
    return NormalizedAnswer(" ".join(s.split()), percent or percent_word)


def has_stray_words(s: str) -> bool:
    """True if s has a multi-letter word that is not a LaTeX command or math word.

    "72 and 73" or "seven" would be read by math-verify as products of symbols or a set;
    a number-valued gold can never equal them, so they are scored wrong without it.
    """
    for m in _WORD_RE.finditer(s):
        if m.start() > 0 and s[m.start() - 1] == "\\":
            continue  # a LaTeX command
        if len(m.group()) >= 2 and m.group().lower() not in MATH_WORDS:
            return True
    return False
