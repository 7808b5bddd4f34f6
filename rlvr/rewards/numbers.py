"""Exact parsing of numbers: the verifier's fast path, and closed-form golds.

A "plain number" is anything built from decimal literals with exact rational arithmetic:
``72``, ``-3.5``, ``7,425,000``, ``1.5e3``, ``\\frac{1}{2}``, ``\\dfrac12``, ``3/4``,
``1.5 \\times 10^{3}``, ``2^{10}``. Values are ``fractions.Fraction``, so ``0.1 + 0.2``
style float error never enters a reward. ``parse_number(text, closed_form=True)`` also reads
closed-form real numbers (sums and differences, ``\\sqrt{3}``, ``\\sqrt[3]{2}``,
``3\\sqrt{13}``, ``\\frac{5\\sqrt{42}}{27}``, ``\\pi``, ``e``, implicit products, mixed
numbers ``1\\frac{1}{2}``): golds are parsed that way; such a value is kept as a
60-significant-digit approximation flagged inexact.

Every construct is bounded, because the input is model output:

- a literal may have at most ``MAX_DIGITS`` digits and an exponent of at most
  ``MAX_EXPONENT`` in magnitude (``1e999999999`` never builds a giant integer);
- every intermediate numerator and denominator stays under ``MAX_BITS`` bits; a power is
  estimated from bit lengths *before* it is computed, so ``5^{5^{5^{5^{5}}}}`` is rejected
  in microseconds instead of exhausting memory;
- nesting deeper than ``MAX_DEPTH`` is rejected.

A value past those limits cannot equal any gold (golds obey the same limits), so such an
answer is scored wrong, not sent to math-verify. ``value_too_large`` finds such values
*anywhere* in an expression the parser cannot read whole (``x^{5^{5^{5^{5}}}}``,
``\\log(10^{10^{10}})``), so they never reach math-verify either. The parser and the scan
are in ``rlvr.rewards.expression``; this module holds the values, their arithmetic and
the equality rule.
"""

from __future__ import annotations

import decimal
import math
import re
from dataclasses import dataclass
from fractions import Fraction

MAX_DIGITS = 1000  # digits in one literal
MAX_EXPONENT = 1000  # |k| in 1.5e<k>
MAX_BITS = 8000  # numerator/denominator of any intermediate value (~2400 decimal digits)
MAX_DEPTH = 50  # nested braces/parentheses/\frac
MAX_SCAN_EXPONENT = 10_000  # an exponent beyond this anywhere in an answer: too large to compare
MAX_FACTORIAL = 1000
_PRECISION = 60  # significant digits of inexact (closed-form) values
_MAX_INEXACT = Fraction(10) ** 40  # beyond this, 6 decimal places of an approximation mean nothing
_CTX = decimal.Context(prec=_PRECISION + 10, Emax=10**6, Emin=-(10**6))
_PI = Fraction(decimal.Decimal(
    "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899863"))
_E = Fraction(_CTX.exp(decimal.Decimal(1)))


class NotPlainNumber(ValueError):
    """The text is not (only) a number this parser reads: it needs math-verify."""


class AnswerRejected(ValueError):
    """The text is a number we refuse to evaluate (too large, too deep, division by zero).

    Such an answer cannot equal a valid gold; the verifier scores it wrong.
    """


@dataclass(frozen=True)
class Num:
    """A parsed value.

    value:   exact for rationals; a 60-significant-digit approximation when not ``exact``.
    exact:   False for irrational closed forms (\\sqrt{2}, \\pi).
    decimal: written with a decimal point or e-notation (a "float" in math-verify's sense):
             such values compare after rounding to 6 decimal places.
    """

    value: Fraction
    exact: bool = True
    decimal: bool = False


# A decimal literal. Thousands groups must be exactly 3 digits with one consistent
# separator (',' or ' '), so "1,5" or "10 20" are not read as one number.
_NUMBER_RE = re.compile(
    r"""
    (?P<int> \d{1,3} (?P<sep>[ ,]) \d{3} (?:(?P=sep)\d{3})* (?!\d) | \d+ )?
    (?: (?P<dot>\.) (?P<frac>\d+) | (?<=\d)(?P<dot2>\.)(?!\d) )?
    (?: [eE] (?P<exp>[+-]?\d+) )?
    """,
    re.VERBOSE | re.ASCII,
)
_FRAC_CMD_RE = re.compile(r"\\[dtc]?frac(?![A-Za-z])")
_SQRT_RE = re.compile(r"\\sqrt(?![A-Za-z])")
_PI_RE = re.compile(r"\\pi(?![A-Za-z])|π")
_E_RE = re.compile(r"e(?![A-Za-z0-9])")
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


def _approx(x: Fraction) -> Fraction:
    """x rounded to _PRECISION significant digits (keeps inexact values small)."""
    if x == 0:
        return x
    if abs(x) > _MAX_INEXACT:
        raise AnswerRejected("value too large to compare to 6 decimal places")
    d = _CTX.divide(decimal.Decimal(x.numerator), decimal.Decimal(x.denominator))
    return Fraction(decimal.Context(prec=_PRECISION).plus(d))


def _dec(x: Fraction) -> decimal.Decimal:
    return _CTX.divide(decimal.Decimal(x.numerator), decimal.Decimal(x.denominator))


def _combine(a: Num, b: Num, value: Fraction) -> Num:
    exact = a.exact and b.exact
    return Num(_check_size(value) if exact else _approx(value), exact, a.decimal or b.decimal)


def _int_root(x: int, n: int) -> int | None:
    """The integer n-th root of x >= 0 if x is a perfect n-th power, else None."""
    if x < 2:
        return x
    r = math.isqrt(x) if n == 2 else round(x ** (1.0 / n)) if x.bit_length() < 1000 else None
    if r is None:
        return None
    for c in (r - 1, r, r + 1):
        if c >= 0 and c**n == x:
            return c
    return None


def _root(x: Num, n: int) -> Num:
    """Principal real n-th root; exact when numerator and denominator are perfect powers."""
    if n < 1:
        raise NotPlainNumber("root index must be a positive integer")
    if x.value < 0:
        if n % 2 == 0:
            raise NotPlainNumber("even root of a negative number")
        r = _root(Num(-x.value, x.exact, x.decimal), n)
        return Num(-r.value, r.exact, r.decimal)
    if x.exact:
        p, q = _int_root(x.value.numerator, n), _int_root(x.value.denominator, n)
        if p is not None and q is not None:
            return Num(Fraction(p, q), True, x.decimal)
    if x.value == 0:
        return Num(Fraction(0), x.exact, x.decimal)
    d = _dec(x.value)
    r = _CTX.sqrt(d) if n == 2 else _CTX.power(d, _CTX.divide(decimal.Decimal(1), decimal.Decimal(n)))
    return Num(_approx(Fraction(r)), False, x.decimal)


def _power(base: Num, exponent: Num) -> Num:
    e_val = exponent.value
    if e_val.denominator != 1 or not exponent.exact:
        if not exponent.exact or e_val.denominator > 1000:
            raise NotPlainNumber("non-integer exponent")
        if base.value < 0:
            raise NotPlainNumber("fractional power of a negative number")
        return _power(_root(base, e_val.denominator), Num(Fraction(e_val.numerator), True, exponent.decimal))
    e = e_val.numerator
    b = base.value
    dec = base.decimal or exponent.decimal
    if b == 0:
        if e < 0:
            raise AnswerRejected("division by zero")
        return Num(Fraction(1) if e == 0 else Fraction(0), base.exact, dec)
    if b == 1 or (b == -1 and base.exact):
        return Num(Fraction(1 if (b == 1 or e % 2 == 0) else -1), base.exact, dec)
    if abs(e) > MAX_BITS:
        raise AnswerRejected(f"power beyond {MAX_BITS} bits")
    if base.exact:
        # |base^e| needs about (bits-1)*|e| bits; decide before computing anything.
        bits = max(b.numerator.bit_length(), b.denominator.bit_length())
        if (bits - 1) * abs(e) > MAX_BITS:
            raise AnswerRejected(f"power beyond {MAX_BITS} bits")
        return Num(_check_size(b**e), True, dec)
    mag = abs(_dec(b))
    if mag.adjusted() * abs(e) > 60:
        raise AnswerRejected("value too large to compare to 6 decimal places")
    return Num(_approx(Fraction(_CTX.power(_dec(b), e))), False, dec)


def round_places(x: Fraction, places: int) -> Fraction:
    """x rounded to ``places`` decimal places, ties to even (as sympy's Float.round)."""
    scale = 10**places
    n, rem = divmod(x * scale, 1)
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
        n += 1
    return Fraction(int(n), scale)


def numbers_equal(answer: Num, gold: Num, float_rounding: int = 6, rel_tol: Fraction = Fraction(0)) -> bool:
    """The equality rule (README, "Equality").

    - either side written as a decimal: equal after rounding both to ``float_rounding``
      decimal places (72.0000001 = 72, 0.333333 = 1/3; 0.333 != 1/3, 12345.68 != 12345.67);
    - both exact: exactly equal (1234568 != 1234567.5 is decided by rounding: 1234567.5 is a decimal);
    - an inexact closed form against a non-decimal: equal to 40 significant digits
      (\\sqrt{12} = 2\\sqrt{3}; a fraction is never an irrational gold);
    - ``rel_tol`` > 0 loosens any of these (off by default).
    """
    a, g = answer.value, gold.value
    if a == g and answer.exact and gold.exact:
        return True
    if answer.decimal or gold.decimal:
        if round_places(a, float_rounding) == round_places(g, float_rounding):
            return True
    elif not (answer.exact and gold.exact):
        if abs(a - g) <= Fraction(1, 10**40) * max(1, abs(a), abs(g)):
            return True
    return rel_tol > 0 and abs(a - g) <= rel_tol * max(abs(a), abs(g))


def gold_candidates(gold: Num, gold_percent: bool, answer_percent: bool) -> list[Num]:
    """Values the answer (as written, without its % sign) may equal: the percent rule.

    When exactly one side carries a percent sign, both readings of it are accepted:
    "x%" matches "x" (the sign was dropped) and "x/100" (the sign means divide by 100).
    When both or neither carry one, numbers compare as written.
    """
    if gold_percent == answer_percent:
        return [gold]
    if answer_percent:  # answer a%, gold g: a == g  or  a/100 == g
        return [gold, Num(gold.value * 100, gold.exact, gold.decimal)]
    return [gold, Num(gold.value / 100, gold.exact, gold.decimal)]  # gold g%, answer a: a == g or g/100
