"""Text clean-up shared by golds and answers: wrappers, spacing, units, percent signs,
scale words, hedges (\\pm, sets, lists, several assignments), relations that are not values,
and the one number among words in a final-answer statement.

Everything here is linear-time string work on text that is already bounded in length
(the verifier rejects longer answers before calling in), so it cannot hang.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from rlvr.rewards.expression import parse_number
from rlvr.rewards.numbers import NotPlainNumber

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
        "²": "^2",  # m², cm³
        "³": "^3",
        "€": "",
        "£": "",
        "¥": "",
    }
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SIMPLE_NUMBER_RE = re.compile(r"[-+]?\d{1,30}(?:\.\d{1,30})?", re.ASCII)
_PY_POWER_RE = re.compile(r"(?<=[\d)}])\s*\*\*\s*(?=[\d({])")
_NON_ASCII_RE = re.compile(r"[^\x00-\x7f]")
# Chat-template end-of-turn tokens: nothing after one is the model's answer ("72 <|im_end|>").
_END_TOKEN_RE = re.compile(r"<\|(?:im_end|im_start|endoftext|end_of_text|eot_id|eom_id|end)\|>|</s>")
_THOUSANDS_BANG_RE = re.compile(r"(\d)\s*(?:\{,\}|\{\s*,\s*\}|,)\s*\\!\s*(?=\d)|(\d)\s*\{\s*,\s*\}\s*(?=\d)")
_DROP_RE = re.compile(
    r"\\\$|\$|\\[()\[\]]|\\(?:displaystyle|textstyle|scriptstyle|left|right|big|Big|bigl|bigr|Bigl|Bigr)(?![A-Za-z])|\\!"
)
_SPACE_CMD_RE = re.compile(r"\\[,;: ]|\\q?quad(?![A-Za-z])|~")
_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mathsf|mbox|hbox|operatorname|boxed|fbox)\s*\{([^{}]*)\}"
)
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])")
_PERCENT_TAIL_RE = re.compile(r"\s*(?:\\?%|\bper\s*cent\b|\bpercent(?:age)?\b|\bpct\b)\s*$", re.IGNORECASE)
_TRAILING_PUNCT = " .,;:!?"
_LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z ]{0,30}:\s*")
_APPROX_RE = re.compile(r"\\approx(?![A-Za-z])|≈|\\simeq(?![A-Za-z])|\\sim(?![A-Za-z])")
# A multiple-choice label before the number: "(C) 12", "B. 12", "\textbf{(B)} 12".
_CHOICE_RE = re.compile(r"^(?:\(\s*[A-Ha-h]\s*\)|[A-H][.:])\s*(?=[-+.\d\\])")

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
    """An answer reduced to the expression that is compared: ``text`` without its percent sign.

    ``verdict`` is set when the answer is decided by its form alone: ("no_answer", why) for
    a hedge (several values, \\pm, a set, a scale word that cannot be read), ("wrong", why)
    for a relation that is not a value (``72 != 68``).
    """

    text: str
    percent: bool
    verdict: tuple[str, str] | None = None

    def key(self) -> str:
        return self.text + ("%" if self.percent else "")


@functools.lru_cache(maxsize=4096)
def _ascii_char(c: str) -> str:
    """Full-width forms and other scripts' decimal digits as ASCII ("７" -> "7", "٣" -> "3")."""
    if unicodedata.category(c) == "Nd":
        return str(unicodedata.decimal(c))
    if 0xFF01 <= ord(c) <= 0xFF5E:  # full-width ASCII: "：" "．" "％"
        return chr(ord(c) - 0xFEE0)
    return c


def prepare_text(text: str) -> str:
    """Completion- or gold-level clean-up before extraction: cut at an end-of-turn special
    token, and read full-width and other Unicode decimal digits as digits. Linear."""
    m = _END_TOKEN_RE.search(text)
    if m is not None:
        text = text[: m.start()]
    if not text.isascii():
        text = _NON_ASCII_RE.sub(lambda m: _ascii_char(m.group()), text)
    return text


def clean_latex(text: str) -> str:
    """Drop math delimiters, sizing/spacing commands and \\text-like wrappers; unify dashes/spaces."""
    s = _CONTROL_RE.sub(" ", text.translate(_TRANSLATE))
    s = _THOUSANDS_BANG_RE.sub(lambda m: (m.group(1) or m.group(2)) + ",", s)  # 32,\! 349 -> 32,349
    s = _PY_POWER_RE.sub("^", s).replace("**", "")  # 10**10 is a power; **72** is markdown bold
    s = s.replace("__", "")
    s = _DROP_RE.sub("", s)
    s = s.replace("{,}", ",")
    s = _SPACE_CMD_RE.sub(" ", s)
    for _ in range(4):  # nested \text{\textbf{..}}: a few rounds, never unbounded
        s, n = _TEXT_CMD_RE.subn(r" \1 ", s)
        if n == 0:
            break
    s = _DEGREE_RE.sub(" ", s)
    s = s.replace("√", "\\sqrt ")
    return " ".join(s.split())


def split_percent(s: str) -> tuple[str, bool]:
    """Remove one trailing percent sign (or the word percent); say whether there was one."""
    m = _PERCENT_TAIL_RE.search(s)
    if m is None:
        return s, False
    return s[: m.start()].rstrip(_TRAILING_PUNCT), True


def strip_units(s: str) -> tuple[str, bool, int | str | None]:
    """Remove trailing unit words after a number; returns (rest, percent_word_seen, scale):
    scale is the multiplier of a leading scale word ("72 thousand apples" -> 1000), the word
    itself when it cannot be read as one ("72 thousandths"), else None."""
    offset = max(0, len(s) - 200)  # units are short; never scan a long answer quadratically
    m = _UNIT_TAIL_RE.search(s, offset)
    if m is None:
        return s, False, None
    rest = s[: m.start()].rstrip()
    if not rest or not (rest[-1].isdigit() or rest[-1] in "})%" or _ENDS_WITH_COMMAND_RE.search(rest)):
        return s, False, None
    words = _WORD_RE.findall(m.group())
    if any(w.lower() in MATH_WORDS for w in words):
        return s, False, None
    if len(words) == 1 and len(words[0]) == 1 and words[0] not in _ONE_LETTER_UNITS:
        return s, False, None
    percent = any(w.lower() in _PERCENT_WORDS for w in words)
    first = words[0].lower()
    if first in _SCALE:
        return rest, percent, _SCALE[first]
    if _VOID_SCALE_RE.match(first):
        return rest, percent, first
    return rest, percent, None


_RELATION_RE = re.compile(r"!=|≠|¬|<>|\\(?:ne|neq|neg|not|lnot)(?![A-Za-z])")
_HEDGE_RE = re.compile(r"\\(?:pm|mp)(?![A-Za-z])|±|∓|\\\{|\\\}|\\(?:lbrace|rbrace|cup|cap)(?![A-Za-z])")
# x=72, y=68 / x=72 \quad y=68: more than one "name =" is several answers.
_ASSIGN_RE = re.compile(r"(?:^|[\s,;(])[A-Za-z]+(?:_\{?\w+\}?)?'*\s*=(?!=)")
# The left side of an assignment: a name or label, optional subscript, primes and arguments.
_NAME_RE = re.compile(r"(?:\\[A-Za-z]+\s*)?[A-Za-z][A-Za-z ]{0,40}(?:_\{?[^{}=]*\}?)?'*(?:\s*\([^()=]*\))?|\\[A-Za-z]+")
_LETTER_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]")
# A comma followed by a space or next to a non-digit ("72, 72", "x=1,y=2"), or a semicolon:
# a list. "1,5" and "7,42,500" are malformed numbers (scored wrong), not lists.
_LIST_RE = re.compile(r",\s|,(?!\d)|(?<!\d),|;")
_SCALE = {"thousand": 10**3, "thousands": 10**3, "million": 10**6, "millions": 10**6,
          "billion": 10**9, "billions": 10**9, "trillion": 10**12, "trillions": 10**12,
          "hundred": 100, "hundreds": 100, "dozen": 12, "dozens": 12}
_VOID_SCALE_RE = re.compile(r"^(?:tenth|hundredth|thousandth|millionth|billionth|trillionth)s?$", re.IGNORECASE)
_PIECE_LEAD_RE = re.compile(r"^(?:[\s,;:!?]|\.(?=\s))+")
_PERCENT_WORDS = frozenset(("percent", "pct", "percentage", "percents"))
# Words that make a statement something other than one value ("not 72", "between 3 and 4").
_HEDGE_WORDS_RE = re.compile(
    r"\b(?:not|never|no|isn't|aren't|cannot|can't|neither|either|or|between|maybe|perhaps|possibly|"
    r"except|unless|at\s+least|at\s+most|more\s+than|less\s+than|fewer\s+than|greater\s+than|up\s+to)\b",
    re.IGNORECASE,
)


def _last_equation_side(s: str, words: bool = False) -> tuple[str, tuple[str, str] | None]:
    """``x = 5`` -> ``5``; ``\\frac13 \\approx 0.333`` -> ``\\frac13`` (the exact side).

    Only an assignment is reduced to its value: the left side must be a name (``x``,
    ``a_{37}``, ``f(2)``, ``\\text{Area}``) or a plain computation (``5+5+1 = 11``). Another
    equation (``2x + z = 1``) is not a value: verdict wrong (in ``words`` mode it is left
    for the words step, which may find ``6 \\times 12 = 72`` inside a sentence)."""
    if "=" in s and not any(op in s for op in ("<", ">", "\\le", "\\ge")):
        depth, first, cut = 0, -1, -1
        for i, c in enumerate(s):  # '=' outside braces only: not the one in \sum_{k=1}
            depth += c in "{(["
            depth -= c in "})]"
            if c == "=" and depth == 0:
                first = i if first < 0 else first
                cut = i
        if cut >= 0:
            left = s[:first].strip()
            if _NAME_RE.fullmatch(left) or not _LETTER_RE.search(left):
                s = s[cut + 1 :].strip()
            elif not words:
                return s, ("wrong", "an equation, not a value")
    if _APPROX_RE.search(s):
        parts = [p.strip() for p in _APPROX_RE.split(s)]
        s = next((p for p in parts if any(c.isdigit() for c in p)), parts[-1])
    return s, None


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


def _form_verdict(s: str) -> tuple[str, str] | None:
    """A verdict from the answer's form alone, before any number is read."""
    if _HEDGE_RE.search(s):
        return ("no_answer", "a hedge: \\pm or a set in the answer")
    if _RELATION_RE.search(s):
        return ("wrong", "a relation (not equal), not a value")
    if len(_ASSIGN_RE.findall(s)) > 1:
        return ("no_answer", "a hedge: several assignments")
    return None


def _strip_tail(s: str) -> tuple[str, bool, tuple[str, str] | None]:
    """Percent signs, trailing units and scale words: (text, percent, verdict)."""
    s, percent = split_percent(s)
    rest, percent_word, scale = strip_units(s)
    if scale is not None and has_stray_words(rest):
        rest, scale = s, None  # "It is 72 thousand": the words step reads the scale word
    if isinstance(scale, str):
        return rest, percent, ("no_answer", f"scale word {scale!r} cannot be read as a value")
    if scale is not None:
        rest = "{" + rest + "} \\times " + str(scale)
    s = rest.rstrip(_TRAILING_PUNCT).strip()
    if not percent:
        s, percent = split_percent(s)  # "50% of them": the unit came after the sign
    return s, percent or percent_word, None


def _piece(text: str, word: str) -> str:
    """A math piece cut out of a sentence, with a scale or percent word right after it."""
    piece = _PIECE_LEAD_RE.sub("", text.strip(" ,;:!?")).strip()  # ". 72" after "approx."
    if piece.endswith(("(", "[")):  # "72 (approx.)": the bracket belongs to the words
        piece = piece[:-1].strip()
    if piece.startswith((")", "]")):
        piece = piece[1:].strip()
    if word.lower() in _SCALE or word.lower() in _PERCENT_WORDS or _VOID_SCALE_RE.match(word):
        piece += " " + word
    return piece


def _is_variable_expression(piece: str) -> bool:
    """An expression in a variable ("x^2", "a_1", "f(2)"): not a number stated."""
    if not _LETTER_RE.search(piece):
        return False
    norm = normalize_answer(piece)
    if norm.verdict is not None:
        return False
    try:
        parse_number(norm.text, closed_form=True)
    except (NotPlainNumber, ValueError, ArithmeticError):
        return bool(_LETTER_RE.search(norm.text))
    return False


def _one_number_in_words(s: str) -> tuple[str | None, tuple[str, str] | None]:
    """"The largest n is 34" -> "34": the only number among words, with a scale or percent
    word right after it. Several pieces count as one number when they all have the same
    value ("7 cubes, since 3 + 4 = 7"). (None, verdict) for hedges; (None, None) when there
    is no number."""
    if _HEDGE_WORDS_RE.search(s):
        return None, ("no_answer", "a hedge: the statement is not one value (not/or/between/at least...)")
    pieces: list[str] = []
    last = 0
    stray = [m for m in _WORD_RE.finditer(s) if _is_stray(s, m)]
    for m in stray + [None]:
        piece = s[last : m.start()] if m is not None else s[last:]
        if any(c.isdigit() for c in piece):
            pieces.append(_piece(piece, m.group() if m is not None else ""))
        if m is not None:
            last = m.end()
    pieces = [p for p in pieces if not _is_variable_expression(p)]  # "the value of $x^2$ is 49"
    if not pieces:
        return None, None
    if len(pieces) > 1:
        values = set()
        for piece in pieces:
            norm = normalize_answer(piece)
            try:
                values.add((parse_number(norm.text).value, norm.percent) if norm.verdict is None else None)
            except (NotPlainNumber, ValueError, ArithmeticError):
                values.add(None)
        if len(values) != 1 or None in values:
            return None, ("no_answer", "a hedge: several numbers stated")
        return pieces[-1], None
    return pieces[0], None


def normalize_answer(raw: str, words: bool = False) -> NormalizedAnswer:
    """Reduce an extracted answer to the expression to compare, plus its percent flag.

    Order: clean LaTeX -> hedges and relations -> keep the right side of the last '=' ->
    drop a leading "Label:" -> drop trailing punctuation, units (scale words multiply) and
    the percent sign -> lists. With ``words`` (a final-answer statement or a box), an answer
    that still has words is reduced to the one number among them (several numbers: a hedge).
    """
    if _SIMPLE_NUMBER_RE.fullmatch(raw):  # "72", "-3.5": every step below is the identity
        return NormalizedAnswer(raw, False)
    s = clean_latex(raw)
    if words and _HEDGE_WORDS_RE.search(s):  # before units: "5 or so" is not "5" with a unit "or so"
        return NormalizedAnswer(s, False, ("no_answer", "a hedge: the statement is not one value (not/or/between/at least...)"))
    verdict = _form_verdict(s)
    if verdict is not None:
        return NormalizedAnswer(s, False, verdict)
    if not words and _LIST_RE.search(s.rstrip(_TRAILING_PUNCT)) and any(c.isdigit() for c in s):
        return NormalizedAnswer(s, False, ("no_answer", "a hedge: a list of values"))
    s, verdict = _last_equation_side(s, words)
    if verdict is not None:
        return NormalizedAnswer(s, False, verdict)
    s = _CHOICE_RE.sub("", _LABEL_RE.sub("", s))
    s = _unwrap_braces(s.rstrip(_TRAILING_PUNCT).strip())
    s, percent, verdict = _strip_tail(s)
    if verdict is not None:
        return NormalizedAnswer(s, percent, verdict)
    if words and has_stray_words(s):
        piece, verdict = _one_number_in_words(s)
        if verdict is not None:
            return NormalizedAnswer(s, percent, verdict)
        if piece is not None:
            inner = normalize_answer(piece)
            return NormalizedAnswer(inner.text, inner.percent or percent, inner.verdict)
    s = _unwrap_braces(s.rstrip(_TRAILING_PUNCT).strip())
    s = " ".join(s.split())
    if _LIST_RE.search(s) and any(c.isdigit() for c in s):
        return NormalizedAnswer(s, percent, ("no_answer", "a hedge: a list of values"))
    return NormalizedAnswer(s, percent)


def _is_stray(s: str, m: re.Match) -> bool:
    if m.start() > 0 and s[m.start() - 1] == "\\":
        return False  # a LaTeX command
    return len(m.group()) >= 2 and m.group().lower() not in MATH_WORDS


def has_stray_words(s: str) -> bool:
    """True if s has a multi-letter word that is not a LaTeX command or math word.

    "72 and 73" or "seven" would be read by math-verify as products of symbols or a set;
    a number-valued gold can never equal them, so they are scored wrong without it.
    """
    return any(_is_stray(s, m) for m in _WORD_RE.finditer(s))
