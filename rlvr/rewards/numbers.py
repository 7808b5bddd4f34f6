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
``\\log(10^{10^{10}})``), so they never reach math-verify either.
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


class _Parser:
    """Recursive descent; raises instead of returning None.

    sum      := product (('+' | '-') product)*          (closed_form only)
    product  := unary ((OP | implicit) unary)*          OP: * / \\times \\cdot \\div × · ÷
    unary    := ('+' | '-')* power
    power    := atom ('^' (DIGIT | '{' sum '}'))? '!'?
    atom     := NUMBER | '{' sum '}' | '(' sum ')' | FRAC | SQRT | \\pi | e
    FRAC     := \\frac|\\dfrac|\\tfrac|\\cfrac  (DIGIT | '{' sum '}'){2}

    Plain mode (closed_form=False) reads only literals, * / \\frac, integer powers and
    parentheses: what can be compared exactly without any choice of reading.
    """

    def __init__(self, text: str, closed_form: bool):
        self.s = text
        self.i = 0
        self.depth = 0
        self.closed = closed_form

    def parse(self) -> Num:
        value = self.sum()
        self._ws()
        if self.i != len(self.s):
            raise NotPlainNumber(f"unexpected {self.s[self.i:self.i + 10]!r}")
        return value

    def _ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def sum(self) -> Num:
        value = self.product()
        if not self.closed:
            return value
        while True:
            self._ws()
            c = self._peek()
            if c not in ("+", "-"):
                return value
            self.i += 1
            rhs = self.product()
            value = _combine(value, rhs, value.value + rhs.value if c == "+" else value.value - rhs.value)

    def _starts_implicit(self) -> bool:
        """Juxtaposition that is a product: 3\\sqrt{2}, 2\\pi, 2(3+1), \\sqrt{2}\\sqrt{3}."""
        if not self.closed:
            return False
        c = self._peek()
        return c == "(" or bool(_SQRT_RE.match(self.s, self.i) or _PI_RE.match(self.s, self.i)
                                or _E_RE.match(self.s, self.i))

    def product(self) -> Num:
        value = self.unary()
        while True:
            self._ws()
            m = _OP_RE.match(self.s, self.i)
            if m is not None:
                self.i = m.end()
                rhs = self.unary()
                if m.group() in ("/", "\\div", "÷"):
                    if rhs.value == 0:
                        raise AnswerRejected("division by zero")
                    value = _combine(value, rhs, value.value / rhs.value)
                else:
                    value = _combine(value, rhs, value.value * rhs.value)
            elif self._starts_implicit():
                rhs = self.power()
                value = _combine(value, rhs, value.value * rhs.value)
            else:
                return value

    def unary(self) -> Num:
        negative = False
        self._ws()
        while self._peek() in ("+", "-"):  # a loop, not recursion: "- - - - 5" is fine
            negative ^= self._peek() == "-"
            self.i += 1
            self._ws()
        value = self.power()
        if self.closed and self._is_mixed_number(value):
            frac = self.atom()  # 1\frac{1}{2} is one and a half
            value = _combine(value, frac, value.value + frac.value)
        return Num(-value.value, value.exact, value.decimal) if negative else value

    def _is_mixed_number(self, value: Num) -> bool:
        if not (value.exact and value.value.denominator == 1 and value.value >= 0 and not value.decimal):
            return False
        j = self.i
        while j < len(self.s) and self.s[j] == " ":
            j += 1
        if _FRAC_CMD_RE.match(self.s, j) is None or j == 0 or not self.s[self.i - 1].isdigit():
            return False
        return True

    def power(self) -> Num:
        base = self.atom()
        self._ws()
        if self._peek() == "^":
            self.i += 1
            self._ws()
            start, depth = self.i, self.depth
            try:
                exponent = self._digit_or_group()
            except AnswerRejected:
                if base.value != 1 or self.s[start] != "{":
                    raise
                # 1^{9^{9^{9^9}}} is 1 however large the exponent: skip the group, keep parsing.
                self.i, self.depth = self._matching_brace(start) + 1, depth
                return base
            if not self.closed and (exponent.value.denominator != 1 or not exponent.exact):
                raise NotPlainNumber("non-integer exponent")
            base = _power(base, exponent)
            self._ws()
        if self._peek() == "!" and self.s[self.i:self.i + 2] != "!=":
            self.i += 1
            n = base.value
            if not base.exact or n.denominator != 1 or n < 0:
                raise NotPlainNumber("factorial of a non-integer")
            if n > MAX_FACTORIAL:
                raise AnswerRejected(f"factorial beyond {MAX_FACTORIAL}!")
            base = Num(_check_size(Fraction(math.factorial(int(n)))), True, base.decimal)
        return base

    def _matching_brace(self, start: int) -> int:
        level = 0
        for j in range(start, len(self.s)):
            level += self.s[j] == "{"
            level -= self.s[j] == "}"
            if level == 0:
                return j
        raise NotPlainNumber("unbalanced {")

    def _digit_or_group(self) -> Num:
        c = self._peek()
        if c == "{":
            return self._group("{", "}")
        if c.isdigit() and c.isascii():
            self.i += 1
            return Num(Fraction(int(c)))
        if self.closed and (_PI_RE.match(self.s, self.i) or _E_RE.match(self.s, self.i)):
            return self.atom()
        raise NotPlainNumber("expected a digit or {...}")

    def _group(self, open_: str, close: str) -> Num:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise AnswerRejected(f"nested deeper than {MAX_DEPTH} levels")
        self.i += 1  # open_
        value = self.sum()
        self._ws()
        if self._peek() != close:
            raise NotPlainNumber(f"unbalanced {open_}")
        self.i += 1
        self.depth -= 1
        return value

    def atom(self) -> Num:
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
            if den.value == 0:
                raise AnswerRejected("division by zero")
            return _combine(num, den, num.value / den.value)
        if self.closed:
            m = _SQRT_RE.match(self.s, self.i)
            if m is not None:
                self.i = m.end()
                self._ws()
                index = 2
                if self._peek() == "[":
                    n = self._group("[", "]")
                    if not n.exact or n.value.denominator != 1 or not 1 <= n.value <= 100:
                        raise NotPlainNumber("root index must be a small positive integer")
                    index = int(n.value)
                    self._ws()
                if self._peek() == "(":  # √(3) written as \sqrt(3)
                    return _root(self._group("(", ")"), index)
                return _root(self._digit_or_group(), index)
            m = _PI_RE.match(self.s, self.i) or _E_RE.match(self.s, self.i)
            if m is not None:
                self.i = m.end()
                return Num(_PI if m.group() != "e" else _E, False, False)
        raise NotPlainNumber(f"unexpected {self.s[self.i:self.i + 10]!r}")

    def _number(self) -> Num:
        m = _NUMBER_RE.match(self.s, self.i)
        if m is None or m.end() == self.i or not (m.group("int") or m.group("frac")):
            raise NotPlainNumber("malformed number")
        self.i = m.end()
        value = literal_value(m.group("int") or "", m.group("frac") or "", m.group("exp") or "")
        decimal_ = bool(m.group("dot") or m.group("dot2") or m.group("exp"))
        return Num(value, True, decimal_)


def parse_number(text: str, closed_form: bool = False) -> Num:
    """The value of a normalised answer or gold (see the module docstring).

    Raises NotPlainNumber when the text needs math-verify, AnswerRejected when it is a
    number beyond the limits (or divides by zero).
    """
    if not text:
        raise NotPlainNumber("empty")
    return _Parser(text, closed_form).parse()


def parse_plain_number(text: str) -> Fraction:
    """Exact value of a normalised answer made only of numbers and * / ^ \\frac."""
    return parse_number(text).value


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


# -- values too large anywhere in an expression ---------------------------------------------
_CARET_RE = re.compile(r"\^|\*\*")
_FACTORIAL_RE = re.compile(r"(\d+)\s*!(?!=)")
_BIG_LITERAL_RE = re.compile(r"\d[eE][+-]?\d{5,}|\d{%d,}" % (MAX_DIGITS + 1))


def _exponent_text(s: str, i: int) -> tuple[str, int] | None:
    """The exponent after a '^' or '**' ending at i: a {group}, a (group) or a digit run."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None
    pairs = {"{": "}", "(": ")"}
    if s[i] in pairs:
        level = 0
        for j in range(i, min(len(s), i + 300)):  # exponents are short; never rescan a long answer
            level += s[j] == s[i]
            level -= s[j] == pairs[s[i]]
            if level == 0:
                return s[i + 1 : j], j + 1
        return None
    m = re.compile(r"[+-]?\d+").match(s, i)
    return (m.group(), m.end()) if m else None


def value_too_large(text: str) -> str | None:
    """Why ``text`` holds a value too large to compare (an exponent tower, a huge factorial or
    literal) anywhere inside it, or None. Linear-ish and bounded: each exponent is parsed with
    the bounded parser above."""
    if _BIG_LITERAL_RE.search(text):
        return "a number literal beyond the digit or exponent limit"
    for m in _FACTORIAL_RE.finditer(text):
        if len(m.group(1)) > 4 or int(m.group(1)) > MAX_FACTORIAL:
            return f"a factorial beyond {MAX_FACTORIAL}!"
    for m in _CARET_RE.finditer(text):
        found = _exponent_text(text, m.end())
        if found is None:
            continue
        chain = [found[0]]
        end = found[1]
        while len(chain) < 20:  # a^b^c^d: the exponent is b^(c^d)
            nxt = _CARET_RE.match(text, end + len(text[end:]) - len(text[end:].lstrip(" ")))
            found = None if nxt is None else _exponent_text(text, nxt.end())
            if found is None:
                break
            chain.append(found[0])
            end = found[1]
        exponent = chain[-1]
        for e in reversed(chain[:-1]):
            exponent = "{" + e + "}^{" + exponent + "}"
        try:
            value = parse_number(exponent.replace("**", "^"), closed_form=True).value
        except AnswerRejected:
            return "an exponent too large to evaluate"
        except (NotPlainNumber, ArithmeticError, ValueError):
            continue
        if abs(value) > MAX_SCAN_EXPONENT:
            return f"an exponent beyond {MAX_SCAN_EXPONENT}"
    return None
