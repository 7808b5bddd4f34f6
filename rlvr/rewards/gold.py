"""Gold answers: parsed once, when the dataset loads, with the same normalisation as answers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

from rlvr.rewards.expression import parse_number
from rlvr.rewards.extract import count_nonempty_boxes, extract_boxed, extract_statement
from rlvr.rewards.normalize import clean_latex, has_stray_words, normalize_answer, prepare_text
from rlvr.rewards.numbers import AnswerRejected, NotPlainNumber, Num

_SOLUTION_CHARS = 300  # a longer gold with words is a solution text, not an answer
_MAX_GOLD_CHARS = 2000  # no valid number is longer (literals have at most 1000 digits)
_SENTENCE_RE = re.compile(r"[.!?]\s+[A-Z]")
_DOUBLE_SIGN_RE = re.compile(r"[+-]\s*[+-]")


class GoldParseError(ValueError):
    """A gold answer is not a single number; the message says why and quotes it."""


@dataclass(frozen=True)
class Gold:
    """A gold answer: one real number.

    value:   the number as written, without its percent sign ("50%" -> Fraction(50)); for an
             irrational closed form (\\sqrt{3}, \\pi) a 60-significant-digit approximation.
    percent: whether the gold carried a percent sign (see the README, "Percent rule").
    text:    the original text, for logs and the scored output.
    exact:   False for an irrational closed form (compared numerically).
    decimal: written with a decimal point (compared after rounding to 6 decimal places).
    """

    value: Fraction
    percent: bool
    text: str
    exact: bool = field(default=True, compare=False)
    decimal: bool = field(default=False, compare=False)

    @property
    def is_integer(self) -> bool:
        return self.exact and self.value.denominator == 1

    @property
    def num(self) -> Num:
        return Num(self.value, self.exact, self.decimal)


def _final_answer(s: str) -> str:
    """A gold's answer part: the last box ("\\boxed{5}", "So the answer is \\[\\boxed{5}\\]"),
    else a final-answer statement ("The answer is 5."), else the text itself."""
    boxed, _ = extract_boxed(s)
    if boxed is not None:
        if count_nonempty_boxes(s) > 1:
            raise GoldParseError(f"gold answer {s!r:.80} is not one number (several boxed values)")
        return boxed
    stated, _ = extract_statement(s)
    return stated if stated is not None else s


def parse_gold(text: str) -> Gold:
    """Parse a gold answer with the answers' normalisation (README, "Gold answers").

    Accepted: integers, decimals, fractions, e-notation, thousands separators, a percent sign,
    math delimiters, units and labels (``$125$ miles``, ``$x = 11$``, ``$15\\mbox{ cm}^2$``),
    a last ``\\boxed{}``, and closed-form real numbers (``\\sqrt{3}``, ``3\\sqrt{13}``,
    ``\\frac{5\\sqrt{42}}{27}``, ``\\pi``, ``2+3``).

    Raises GoldParseError (a ValueError) with the reason for anything else: empty, words,
    several values, whole solution texts, expressions with variables. Call it when the
    dataset loads, so a bad gold is a counted skip before any GPU time is spent instead of
    silently scoring every completion of that prompt 0.
    """
    if not isinstance(text, str):
        raise GoldParseError(f"gold answer must be a string, got {type(text).__name__}: {text!r:.80}")
    s = prepare_text(text).strip()
    if len(s) > _MAX_GOLD_CHARS:
        raise GoldParseError(f"gold answer {text!r:.80} is longer than {_MAX_GOLD_CHARS} characters; expected a single number")
    cleaned = clean_latex(s)
    if (len(s) > _SOLUTION_CHARS and has_stray_words(cleaned)) or len(_SENTENCE_RE.findall(cleaned)) >= 2:
        raise GoldParseError(
            f"gold answer {text!r:.80} is a whole solution text ({len(s)} characters), not a final answer; "
            "keep only the final number (for MATH-style solutions, the content of the last \\boxed{})"
        )
    norm = normalize_answer(_final_answer(s))
    if norm.verdict is not None:
        raise GoldParseError(f"gold answer {text!r:.80} is not one number ({norm.verdict[1]})")
    body = norm.text
    if not body:
        raise GoldParseError(f"gold answer {text!r:.80} is empty; expected a single number")
    if re.fullmatch(r"[A-Za-z]", body):
        raise GoldParseError(f"gold answer {text!r:.80} is a letter (a choice?), not a number")
    if _DOUBLE_SIGN_RE.search(body) or body.count("/") > 1:
        raise GoldParseError(f"gold answer {text!r:.80} is not one number (ambiguous signs or slashes)")
    try:
        num = parse_number(body, closed_form=True)
    except AnswerRejected as e:
        if "division by zero" in str(e):
            raise GoldParseError(f"gold answer {text!r:.80} has a denominator of zero") from None
        raise GoldParseError(f"gold answer {text!r:.80} is out of range: {e}") from None
    except (NotPlainNumber, ArithmeticError, ValueError):
        hint = "it contains letters" if has_stray_words(body) or re.search(r"(?<![\\A-Za-z])[A-Za-z]", body) else "it is not one number"
        raise GoldParseError(
            f"gold answer {text!r:.80} is not a single number ({hint}); expected a number such as 72, -3.5, "
            "7,425,000, 1/2, \\frac{1}{2}, 50%, $125$ miles, or a closed form such as \\sqrt{3} or 2\\pi"
        ) from None
    return Gold(value=num.value, percent=norm.percent, text=text, exact=num.exact, decimal=num.decimal)
