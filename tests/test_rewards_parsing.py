"""Extraction, normalisation and the exact number parser, without any worker process."""

import time
from fractions import Fraction

import pytest

from rlvr.rewards import VerifyResult, extract_answer, outcome_metrics
from rlvr.rewards.normalize import normalize_answer
from rlvr.rewards.numbers import (
    MAX_BITS,
    AnswerRejected,
    NotPlainNumber,
    close_enough,
    gold_candidates,
    parse_plain_number,
)


# -- extraction ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, answer, has_boxed",
    [
        ("so \\boxed{7}", "7", True),
        ("\\boxed{5} then \\boxed{7}", "7", True),
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}", True),
        ("\\boxed{a\\{b\\}c}", "a\\{b\\}c", True),  # escaped braces are not structure
        ("\\fbox{7}", "7", True),
        ("\\boxed{7", None, True),  # unclosed
        ("\\boxed{5} and \\boxed{7", None, True),  # the last box is unclosed: no answer
        ("\\boxed{}", None, True),
        ("\\boxed 7", None, True),  # box without braces: not an answer, but the format was tried
        ("The answer is 72.", "72.", False),
        ("Answer: 72", "72", False),
        ("answer = 72", "72", False),
        ("The final answer is: **72**", "72", False),
        ("#### 72", "72", False),
        ("The answer is 72. Let me check.", None, False),
        ("The answer is 72\nmore", None, False),
        ("I got 72.", None, False),
        ("", None, False),
    ],
)
def test_boxed_policy(text, answer, has_boxed):
    got = extract_answer(text, "boxed")
    assert (got.answer, got.has_boxed) == (answer, has_boxed)


@pytest.mark.parametrize(
    "text, answer",
    [
        ("3 plus 4 is 7", "7"),
        ("it is 7,425,000 in total", "7,425,000"),
        ("temperature -5 degrees", "-5"),
        ("x-5", "5"),
        ("(3)-5", "5"),
        ("half: 1/2.", "1/2"),
        ("50% of them", "50%"),
        ("2.5", "2.5"),
        ("\u22123", "\u22123"),
        ("no digits", None),
    ],
)
def test_last_number_policy(text, answer):
    assert extract_answer(text, "last_number").answer == answer


def test_unknown_policy_is_a_contract_error():
    with pytest.raises(ValueError, match="answer_extraction"):
        extract_answer("x", "first_number")


def test_extraction_is_linear_on_huge_inputs():
    cases = [
        "9" * 100_000,
        "\\boxed{" * 20_000,
        "{" * 100_000 + "\\boxed{7}",
        "The answer is " * 7_000,
        "1," * 50_000,
        ("reasoning 12 and 34. " * 5_000) + "\\boxed{7}",
    ]
    for text in cases:
        for policy in ("boxed", "last_number"):
            start = time.perf_counter()
            extract_answer(text, policy)
            assert time.perf_counter() - start < 0.5, (text[:30], policy)


# -- normalisation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, text, percent",
    [
        ("$72$", "72", False),
        ("\\(72\\)", "72", False),
        ("72 apples", "72", False),
        ("72\\text{ cm}", "72", False),
        ("72^{\\circ}", "72", False),
        ("72°", "72", False),
        ("9.8 m/s^2", "9.8", False),
        ("7\\,425\\,000", "7 425 000", False),
        ("7{,}425", "7,425", False),
        ("\u22125", "-5", False),
        ("50\\%", "50", True),
        ("50 percent", "50", True),
        ("50% of the class", "50", True),
        ("x = 5", "5", False),
        ("\\text{Total: } 72", "72", False),
        ("\\frac{1}{3} \\approx 0.333", "\\frac{1}{3}", False),
        ("{72}", "72", False),
        ("72.", "72", False),
        ("2x", "2x", False),  # a variable is not a unit
        ("3 \\pi", "3 \\pi", False),
        ("5 m", "5", False),
        ("7\x00", "7", False),
    ],
)
def test_normalize_answer(raw, text, percent):
    got = normalize_answer(raw)
    assert (got.text, got.percent) == (text, percent)


# -- the exact parser ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, value",
    [
        ("72", 72),
        ("-72", -72),
        ("- - 3", 3),
        ("1.25", Fraction(5, 4)),
        ("7,425,000", 7425000),
        ("7 425 000", 7425000),
        ("1.5e3", 1500),
        ("1.5 \\times 10^{3}", 1500),
        ("\\frac{1}{2}", Fraction(1, 2)),
        ("\\dfrac12", Fraction(1, 2)),
        ("\\frac{\\frac{1}{2}}{3}", Fraction(1, 6)),
        ("3/4", Fraction(3, 4)),
        ("6/2 \\cdot 3", 9),  # left to right
        ("2^{10}", 1024),
        ("-2^2", -4),  # the power binds tighter than the sign
        ("(-2)^{3}", -8),
        ("2^{-2}", Fraction(1, 4)),
        ("1^{9^{9^{9^{9}}}}", 1),  # base 1: the tower is never evaluated
        ("0.1 * 3", Fraction(3, 10)),  # exact: no 0.30000000000000004
    ],
)
def test_plain_numbers(text, value):
    assert parse_plain_number(text) == value


@pytest.mark.parametrize("text", ["\\sqrt{2}", "2\\pi", "2+3", "1,5", "10 20", "2x", "4^{1/2}", "e", "(1", "1 \\frac{1}{2}"])
def test_not_plain_numbers_go_to_math_verify(text):
    with pytest.raises(NotPlainNumber):
        parse_plain_number(text)


@pytest.mark.parametrize(
    "text",
    [
        "1e999999999",
        "1e-999999999",
        "1e" + "9" * 10_000,
        "9" * 1001,
        "5^{5^{5^{5^{5}}}}",
        "9^{9^{9^{9}}}",
        "2^{100000}",
        "10^{10^{10}}",
        "\\frac{1}{0}",
        "1/0",
        "{" * 60 + "1" + "}" * 60,
        " \\times ".join(["9" * 900] * 5),
    ],
)
def test_pathological_numbers_are_rejected_fast(text):
    start = time.perf_counter()
    with pytest.raises(AnswerRejected):
        parse_plain_number(text)
    assert time.perf_counter() - start < 0.1


def test_largest_allowed_values_are_exact():
    assert parse_plain_number("1e1000") == 10**1000
    assert parse_plain_number("2^{7000}") == 2**7000
    assert (2**7000).bit_length() < MAX_BITS


def test_close_enough_integers_exact_others_relative():
    tol = Fraction(1, 10**6)
    assert close_enough(Fraction(72), Fraction(72), tol)
    assert not close_enough(Fraction(1000001), Fraction(1000000), tol)
    assert close_enough(Fraction(2500001, 10**6), Fraction(5, 2), tol)
    assert not close_enough(Fraction(2501, 1000), Fraction(5, 2), tol)
    assert not close_enough(Fraction(1, 10**9), Fraction(0), tol)


def test_percent_rule_candidates():
    g = Fraction(1, 2)
    assert gold_candidates(g, gold_percent=False, answer_percent=False) == [g]
    assert gold_candidates(g, gold_percent=True, answer_percent=True) == [g]
    assert gold_candidates(g, gold_percent=False, answer_percent=True) == [g, 50]  # a% == g or a/100 == g
    assert gold_candidates(Fraction(50), gold_percent=True, answer_percent=False) == [50, g]  # a == g or g/100


# -- metrics ------------------------------------------------------------------------------------
def _r(outcome, has_boxed=True, fast_path=True):
    return VerifyResult(float(outcome == "correct"), outcome, "x", has_boxed, fast_path)


def test_outcome_metrics_shares():
    results = [_r("correct"), _r("correct", fast_path=False), _r("wrong", has_boxed=False),
               _r("no_answer", has_boxed=False), _r("timeout", fast_path=False), _r("error")]
    m = outcome_metrics(results)
    assert m == {
        "reward/correct": 2 / 6, "reward/wrong": 1 / 6, "reward/no_answer": 1 / 6,
        "reward/timeout": 1 / 6, "reward/error": 1 / 6, "reward/has_boxed": 4 / 6, "reward/fast_path": 4 / 6,
    }
    assert sum(m[f"reward/{o}"] for o in ("correct", "wrong", "no_answer", "timeout", "error")) == pytest.approx(1)


def test_outcome_metrics_empty_batch():
    assert set(outcome_metrics([]).values()) == {0.0}
    assert len(outcome_metrics([])) == 7
