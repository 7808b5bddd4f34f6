"""Exact parsing of plain numbers: the verifier's fast path.

A "plain number" here is anything built from decimal literals with exact rational
arithmetic: ``72``, ``-3.5``, ``7,425,000``, ``1.5e3``, ``\\frac{1}{2}``, ``\\dfrac12``,
``3/4``, ``1.5 \\times 10^{3}``, ``2^{10}``, ``(2)(3)`` is *not* (juxtaposition is left to
math-verify). Values are ``fractions.Fraction``, so ``0.1 + 0.2`` style float error never
enters a reward.

Every construct is bounded, because the input is model output:

- a literal may have at most ``MAX_DIGITS`` digits and an exponent of at most
  ``MAX_EXPONENT`` in magnitude (``1e999999999`` never builds a giant integer);
- every intermediate numerator and denominator stays under ``MAX_BITS`` bits; a power is
  estimated from bit lengths *before* it is computed, so ``5^{5^{5^{5^{5}}}}`` is rejected
  in microseconds instead of exhausting memory;
- nesting deeper than ``MAX_DEPTH`` is rejected.

A value past those limits cannot equal any gold (golds obey the same limits), so such an
answer is scored wrong, not sent to math-verify.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_DIGITS = 1000  # digits in one literal
MAX_EXPONENT = 1000  # |k| in 1.5e<k>
MAX_BITS = 8000  # numerator/denominator of any intermediate value (~2400 decimal digits)
MAX_DEPTH = 50  # nested braces/parentheses/\frac


class NotPlainNumber(ValueError):
    """The text is not (only) a plain number: it needs math-verify."""


class AnswerRejected(ValueError):
    """The text is a number we refuse to evaluate (too large, too deep, division by zero).

    Such an answer cannot equal a valid gold; the verifier scores it wrong.
    """


# A decimal literal. Thousands groups must be exactly 3 digits with one consistent
# separator (',' or ' '), so "1,5" or "10 20" are not read as one number.
_NUMBER_RE = re.compile(
    r"""
    (?P<int> \d{1,3} (?P<sep>[ ,]) \d{3} (?:(?P=sep)\d{3})* (?!\d) | \d+ )?
    (?: \. (?P<frac>\d+) | (?<=\d)\.(?!\d) )?
    (?: [eE] (?P<exp>[+-]?\d+) )?
    """,
    re.VERBOSE | re.ASCII,
)
_FRAC_CMD_RE = re.compile(r"\\[dtc]?frac(?![A-Za-z])")
_OP_RE = re.compile(r"\\(?:times|cdot|div)(?![A-Za-z])|[*/×·÷]")


def literal_value(int_digits: str, frac_digits: str, exp_digits: str) -> Fraction:
    """Exact value of ``<int>.<frac>e<exp>`` (digit strings, possibly empty), within limits."""
    int_digits = int_digits.replace(",", "").replace(" ", "")
    if len(int_digits) + len(frac_digits) > MAX_DIGITS:
        raise AnswerRejected(f"number literal has more than {MAX_DIGITS} digits")
    exponent = 0
    if exp_digits:
        if len(exp_digits.lstrip("+-").lstrip("0")) > 6:  # never int() a huge digit string
            raise AnswerRejected(f"exponent beyond ±{MAX_EXPONENT}")
        exponent = int(exp_digits)
        if abs(exponent) > MAX_EXPONENT:
            raise AnswerRejected(f"exponent beyond ±{MAX_EXPONENT}")
    value = Fraction(int(int_digits + frac_digits or "0"), 10 ** len(frac_digits))
    return value * Fraction(10) ** exponent


def _check_size(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise AnswerRejected(f"intermediate value beyond {MAX_BITS} bits")
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise NotPlainNumber("non-integer exponent")
    e = exponent.numerator
    if base == 0:
        if e < 0:
            raise AnswerRejected("division by zero")
        return Fraction(1) if e == 0 else Fraction(0)
    if base == 1:
        return base
    if base == -1:
        return Fraction(1 if e % 2 == 0 else -1)
    # |base^e| needs about (bits-1)*|e| bits; decide before computing anything.
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if (bits - 1) * abs(e) > MAX_BITS:
        raise AnswerRejected(f"power beyond {MAX_BITS} bits")
    return _check_size(base**e)


class _Parser:
    """Recursive descent over the grammar below; raises instead of returning None.

    expr     := unary (OP unary)*            OP: * / \\times \\cdot \\div × · ÷
    unary    := ('+' | '-')* power
    power    := atom ('^' (DIGIT | '{' expr '}'))?
    atom     := NUMBER | '{' expr '}' | '(' expr ')' | FRAC
    FRAC     := \\frac|\\dfrac|\\tfrac|\\cfrac  (DIGIT | '{' expr '}'){2}
    """

    def __init__(self, text: str):
        self.s = text
        self.i = 0
        self.depth = 0

    def parse(self) -> Fraction:
        value = self.expr()
        self._ws()
        if self.i != len(self.s):
            raise NotPlainNumber(f"unexpected {self.s[self.i:self.i + 10]!r}")
        return value

    def _ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def expr(self) -> Fraction:
        value = self.unary()
        while True:
            self._ws()
            m = _OP_RE.match(self.s, self.i)
            if m is None:
                return value
            self.i = m.end()
            rhs = self.unary()
            if m.group() in ("/", "\\div", "÷"):
                if rhs == 0:
                    raise AnswerRejected("division by zero")
                value = _check_size(value / rhs)
            else:
                value = _check_size(value * rhs)

    def unary(self) -> Fraction:
        negative = False
        self._ws()
        while self._peek() in ("+", "-"):  # a loop, not recursion: "- - - - 5" is fine
            negative ^= self._peek() == "-"
            self.i += 1
            self._ws()
        value = self.power()
        return -value if negative else value

    def power(self) -> Fraction:
        base = self.atom()
        self._ws()
        if self._peek() != "^":
            return base
        self.i += 1
        self._ws()
        start, depth = self.i, self.depth
        try:
            exponent = self._digit_or_group()
        except AnswerRejected:
            if base != 1 or self.s[start] != "{":
                raise
            # 1^{9^{9^{9^9}}} is 1 however large the exponent: skip the group, keep parsing.
            self.i, self.depth = self._matching_brace(start) + 1, depth
            return base
        return _power(base, exponent)

    def _matching_brace(self, start: int) -> int:
        level = 0
        for j in range(start, len(self.s)):
            level += self.s[j] == "{"
            level -= self.s[j] == "}"
            if level == 0:
                return j
        raise NotPlainNumber("unbalanced {")

    def _digit_or_group(self) -> Fraction:
        c = self._peek()
        if c == "{":
            return self._group("{", "}")
        if c.isdigit() and c.isascii():
            self.i += 1
            return Fraction(int(c))
        raise NotPlainNumber("expected a digit or {...}")

    def _group(self, open_: str, close: str) -> Fraction:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise AnswerRejected(f"nested deeper than {MAX_DEPTH} levels")
        self.i += 1  # open_
        value = self.expr()
        self._ws()
        if self._peek() != close:
            raise NotPlainNumber(f"unbalanced {open_}")
        self.i += 1
        self.depth -= 1
        return value

    def atom(self) -> Fraction:
        self._ws()
        c = self._peek()
        if c == "{":
            return self._group("{", "}")
        if c == "(":
            return self._group("(", ")")
        if (c.isdigit() and c.isascii()) or c == ".":
            return self._number()
        m = _FRAC_CMD_RE.match(self.s, self.i)
        if m is not None:
            self.i = m.end()
            self._ws()
            num = self._digit_or_group()
            self._ws()
            den = self._digit_or_group()
            if den == 0:
                raise AnswerRejected("division by zero")
            return _check_size(num / den)
        raise NotPlainNumber(f"unexpected {self.s[self.i:self.i + 10]!r}")

    def _number(self) -> Fraction:
        m = _NUMBER_RE.match(self.s, self.i)
        if m is None or m.end() == self.i or not (m.group("int") or m.group("frac")):
            raise NotPlainNumber("malformed number")
        self.i = m.end()
        return literal_value(m.group("int") or "", m.group("frac") or "", m.group("exp") or "")


def parse_plain_number(text: str) -> Fraction:
    """Exact value of a normalised answer made only of numbers and * / ^ \\frac.

    Raises NotPlainNumber when the text needs math-verify, AnswerRejected when it is a
    number beyond the limits in this module's docstring (or divides by zero).
    """
    if not text:
        raise NotPlainNumber("empty")
    return _Parser(text).parse()


def close_enough(answer: Fraction, gold: Fraction, rel_tol: Fraction) -> bool:
    """Integers exactly; otherwise |a - g| <= rel_tol * max(|a|, |g|).

    "Integer" is decided by the gold: for gold 72 only exactly 72 counts (72.0 and 144/2
    are exactly 72); for gold 0.5 an answer within rel_tol counts.
    """
    if answer == gold:
        return True
    if gold.denominator == 1:
        return False
    return abs(answer - gold) <= rel_tol * max(abs(answer), abs(gold))


def gold_candidates(gold: Fraction, gold_percent: bool, answer_percent: bool) -> list[Fraction]:
    """Values the answer (as written, without its % sign) may equal: the percent rule.

    When exactly one side carries a percent sign, both readings of it are accepted:
    "x%" matches "x" (the sign was dropped) and "x/100" (the sign means divide by 100).
    When both or neither carry one, numbers compare as written.
    """
    if gold_percent == answer_percent:
        return [gold]
    if answer_percent:  # answer a%, gold g: a == g  or  a/100 == g
        return [gold, gold * 100]
    return [gold, gold / 100]  # gold g%, answer a: a == g  or  a == g/100
