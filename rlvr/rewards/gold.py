"""Gold answers: parsed once, when the dataset loads, into an exact number."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from rlvr.rewards.normalize import clean_latex, split_percent
from rlvr.rewards.numbers import AnswerRejected, literal_value

# One decimal literal, optionally signed; thousands groups of exactly 3 digits.
_LIT = r"[+-]?\s*(?:\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+|\d+)?(?:\.\d+)?(?:[eE][+-]?\d+)?"
_LIT_RE = re.compile(
    r"(?P<sign>[+-]?)\s*(?P<int>\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+|\d+)?"
    r"(?:\.(?P<frac>\d+))?(?:[eE](?P<exp>[+-]?\d+))?",
    re.ASCII,
)
_FRAC_RE = re.compile(
    rf"(?P<sign>[+-]?)\s*\\[dt]?frac\s*(?:\{{\s*(?P<num>{_LIT})\s*\}}|(?P<numd>\d))"
    rf"\s*(?:\{{\s*(?P<den>{_LIT})\s*\}}|(?P<dend>\d))",
    re.ASCII,
)
_SLASH_RE = re.compile(rf"(?P<num>{_LIT})\s*/\s*(?P<den>{_LIT})", re.ASCII)


class GoldParseError(ValueError):
    """A gold answer is not a single number; the message says why and quotes it."""


@dataclass(frozen=True)
class Gold:
    """A gold answer: one exact number.

    value:   the number as written, without its percent sign ("50%" -> Fraction(50)).
    percent: whether the gold carried a percent sign (see the README, "Percent rule").
    text:    the original text, for logs and the scored output.
    """

    value: Fraction
    percent: bool
    text: str

    @property
    def is_integer(self) -> bool:
        return self.value.denominator == 1


def _literal(text: str) -> Fraction:
    m = _LIT_RE.fullmatch(text.strip())
    if m is None or not (m.group("int") or m.group("frac")):
        raise ValueError(f"{text!r} is not a number")
    value = literal_value(m.group("int") or "", m.group("frac") or "", m.group("exp") or "")
    return -value if m.group("sign") == "-" else value


def _parse_value(s: str) -> Fraction:
    m = _FRAC_RE.fullmatch(s)
    if m is not None:
        num = _literal(m.group("num") or m.group("numd"))
        den = _literal(m.group("den") or m.group("dend"))
        sign = -1 if m.group("sign") == "-" else 1
    else:
        m = _SLASH_RE.fullmatch(s)
        if m is None:
            return _literal(s)
        num, den, sign = _literal(m.group("num")), _literal(m.group("den")), 1
    if den == 0:
        raise GoldParseError(f"gold answer {s!r:.80} has a denominator of zero")
    return sign * num / den


def parse_gold(text: str) -> Gold:
    """Parse a gold answer: integer, decimal, fraction (a/b or \\frac{a}{b}), e-notation,
    optional sign (ASCII or Unicode minus), thousands separators, optional percent sign,
    optional $...$ / \\(...\\) wrapper.

    Raises GoldParseError (a ValueError) with the reason when the text is anything else:
    empty, words, units, expressions such as \\sqrt{2}, several numbers. Call it when the
    dataset loads, so a bad gold stops the run before any GPU time is spent instead of
    silently scoring every completion of that prompt 0.
    """
    if not isinstance(text, str):
        raise GoldParseError(f"gold answer must be a string, got {type(text).__name__}: {text!r:.80}")
    s = clean_latex(text)
    s, percent = split_percent(s)
    if not s:
        raise GoldParseError(f"gold answer {text!r:.80} is empty; expected a single number")
    try:
        value = _parse_value(s)
    except GoldParseError:
        raise
    except AnswerRejected as e:
        raise GoldParseError(f"gold answer {text!r:.80} is out of range: {e}") from None
    except ValueError:
        hint = "it contains letters" if re.search(r"[A-Za-z]", s) else "it is not one number"
        raise GoldParseError(
            f"gold answer {text!r:.80} is not a single number ({hint}); expected an integer, "
            "decimal or fraction such as 72, -3.5, 7,425,000, 1/2, \\frac{1}{2} or 50%"
        ) from None
    return Gold(value=value, percent=percent, text=text)
