"""Reading an answer's text as a number: the recursive-descent parser, and the size scan.

``parse_number`` reads plain numbers exactly and, with ``closed_form=True``, closed-form
reals (see ``rlvr.rewards.numbers`` for what each means and the limits every construct
obeys). ``value_too_large`` finds values past those limits anywhere in an expression the
parser cannot read whole, so they never reach math-verify.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from rlvr.rewards.numbers import (
    _E,
    _E_RE,
    _FRAC_CMD_RE,
    _NUMBER_RE,
    _OP_RE,
    _PI,
    _PI_RE,
    _SQRT_RE,
    MAX_DEPTH,
    MAX_DIGITS,
    MAX_FACTORIAL,
    MAX_SCAN_EXPONENT,
    AnswerRejected,
    NotPlainNumber,
    Num,
    _check_size,
    _combine,
    _power,
    _root,
    literal_value,
)


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
