"""Extraction, normalisation and the exact number parser, without any worker process."""

import time
from fractions import Fraction

import pytest

from rlvr.rewards import VerifyResult, extract_answer, outcome_metrics
from rlvr.rewards.expression import parse_number, parse_plain_number, value_too_large
from rlvr.rewards.normalize import normalize_answer
from rlvr.rewards.numbers import (
    MAX_BITS,
    AnswerRejected,
    NotPlainNumber,
    Num,
    gold_candidates,
    numbers_equal,
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
        ("The answer is 72.", "72", False),
        ("Answer: 72", "72", False),
        ("answer = 72", "72", False),
        ("The final answer is: **72**", "72", False),
        ("#### 72", "72", False),
        # a statement counts even when text follows it; it ends at a sentence end or line break
        ("The answer is 72. Let me check.", "72", False),
        ("The answer is 72\nmore", "72", False),
        ("The answer is 3.5. Done.", "3.5", False),
        ("The answer is $1.5$. Done.", "$1.5$", False),
        ("The answer is approx. 72 cm. Done.", "approx. 72 cm", False),  # an abbreviation's full stop
        ("The answer is 70. No wait. The answer is 72.", "72", False),  # the last statement
        ("Final Answer: The final answer is $12$. I hope it is correct.", "$12$", False),
        ("The answer is therefore 72.", "therefore 72", False),  # words are reduced later
        ("the answer to the question is 72.", "72", False),
        ("Answer \\[ 9 \\]", "\\[ 9 \\]", False),  # a bare "Answer" then math
        ("Answer $ 9 $", "$ 9 $", False),
        ("Answer \\[\n9\n\\]", "\\[\n9\n\\]", False),  # display math spans lines
        ("Answer $\n9\n$", None, False),  # inline math does not
        ("**Final Answer**\n\n72", "72", False),
        ("<answer>3</answer>", "3", False),
        ("<answer>The answer is 3.</answer> more", "3", False),
        ("<answer>3", None, False),  # unclosed tag: truncated
        ("答案是 8", "8", False),
        # truncation: cut inside math, or words after the number with no sentence end
        ("The answer is $\\frac{3}{", None, False),
        ("The answer is 72 but wait, let me", None, False),
        ("The answer is 72", "72", False),
        # an empty box is a mention, not an answer
        ("put it in \\boxed{}. The answer is 7.", "7", True),
        ("\\boxed{3} Remember the \\boxed{} format.", "3", True),
        ("\\boxed{} \\boxed{ }", None, True),
        # a completion that is only an answer
        ("-5", "-5", False),
        ("  $\\frac13 $ ", "$\\frac13 $", False),
        ("\\( 1/3 \\)", "\\( 1/3 \\)", False),
        ("28 percent", "28 percent", False),
        ("72 <|im_end|>", "72", False),  # end-of-turn token dropped
        ("\uff17\uff12", "72", False),  # full-width digits
        ("I got 72.", None, False),
        ("AZYUK2A", None, False),
        ("3\n4", None, False),
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
        ("32,\\! 349", "32,349", False),  # ,\! is a thousands separator
        ("11,\\! 111,\\! 111,\\! 100", "11,111,111,100", False),
        ("14 {, }916", "14,916", False),
        ("72 \\text{ thousand}", "{72} \\times 1000", False),  # scale words multiply
        ("1.5 million dollars", "{1.5} \\times 1000000", False),
        ("2 dozen", "{2} \\times 12", False),
        ("28 percentage", "28", True),
        ("\\sum_{k=1}^{3} k", "\\sum_{k=1}^{3} k", False),  # '=' inside braces is not an assignment
        ("x = 5+5+1 = 11", "11", False),
        ("**72**", "72", False),  # markdown bold
        ("72,", "72", False),  # a trailing comma is punctuation, not a list
    ],
)
def test_normalize_answer(raw, text, percent):
    got = normalize_answer(raw)
    assert (got.text, got.percent, got.verdict) == (text, percent, None)


@pytest.mark.parametrize(
    "raw, outcome",
    [
        ("72 \\pm 0", "no_answer"),
        ("\\pm 72", "no_answer"),
        ("\\{72\\}", "no_answer"),
        ("72, 72", "no_answer"),
        ("x=72, y=68", "no_answer"),
        ("x = 72 \\quad y = 68", "no_answer"),
        ("72; 73", "no_answer"),
        ("(3, 4)", "no_answer"),
        ("72 thousandths", "no_answer"),
        ("72 != 68", "wrong"),
        ("72 \\ne 68", "wrong"),
        ("x \\neq 68", "wrong"),
        ("\\neg 72", "wrong"),
        ("72 ≠ 68", "wrong"),
    ],
)
def test_form_verdicts(raw, outcome):
    assert normalize_answer(raw).verdict[0] == outcome


@pytest.mark.parametrize(
    "raw, text",
    [
        ("The largest n is 34", "34"),
        ("therefore 72", "72"),
        ("approximately 72", "72"),
        ("approx. 72 cm", "72"),
        ("The value of x^2 is 49", "49"),  # an expression in a variable is not a number stated
        ("The value of f(2) is 5", "5"),
        ("Jane started growing it 3 hours ago", "3"),
        ("The domain of f(x) has 19 points", "19"),
        ("It is 72 thousand", "{72} \\times 1000"),
        ("It is 50 percent of them", "50"),
        ("seventy-two", "seventy-two"),  # no number: left as words (scored wrong)
    ],
)
def test_words_around_one_number(raw, text):
    assert normalize_answer(raw, words=True).text == text


@pytest.mark.parametrize("raw", ["12 and 13", "5 or 6", "not 72", "between 3 and 4", "at least 5", "the sum of the first 10 terms is 55",
                                 "5 or so", "72 \\text{ or more}"])
def test_words_around_several_numbers_or_a_hedge_are_no_answer(raw):
    assert normalize_answer(raw, words=True).verdict[0] == "no_answer"


def test_words_are_not_reduced_without_permission():
    # a bare completion may not carry words: "I count 7" is reasoning, not an answer
    assert normalize_answer("I count 7").text == "I count 7"


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


def _n(x, exact=True, decimal=False):
    return Num(Fraction(x), exact, decimal)


def test_numbers_equal_rounds_decimals_to_6_places_and_keeps_fractions_exact():
    third = _n(Fraction(1, 3))
    assert numbers_equal(parse_number("0.333333"), third)  # rounded to 6 places: equal
    assert numbers_equal(parse_number("0.3333333"), third)
    assert not numbers_equal(parse_number("0.333"), third)
    assert not numbers_equal(parse_number("0.33333"), third)
    assert numbers_equal(parse_number("72.0000001"), _n(72))
    assert not numbers_equal(parse_number("72.000001"), _n(72))
    assert not numbers_equal(parse_number("12345.68"), parse_number("12345.67"))  # no relative tolerance
    assert not numbers_equal(parse_number("1234568"), parse_number("1234567.5"))
    assert not numbers_equal(parse_number("1234567.5"), parse_number("1234568"))
    assert not numbers_equal(parse_number("\\frac{333333}{1000000}"), third)  # both exact: exactly
    assert numbers_equal(parse_number("\\frac{2}{6}"), third)
    assert not numbers_equal(_n(1000001), _n(1000000))
    # ties round to even, like sympy's Float.round
    assert numbers_equal(parse_number("0.0000005"), _n(0, decimal=True))
    assert not numbers_equal(parse_number("0.0000015"), _n(Fraction(1, 10**6), decimal=True))


def test_numbers_equal_for_irrational_golds():
    sqrt3 = parse_number("\\sqrt{3}", closed_form=True)
    assert not sqrt3.exact
    assert numbers_equal(parse_number("1.732051"), sqrt3)
    assert not numbers_equal(parse_number("1.73205"), sqrt3)
    assert not numbers_equal(parse_number("\\frac{97}{56}"), sqrt3)  # a fraction is never irrational
    assert numbers_equal(parse_number("2\\sqrt{3}", closed_form=True), parse_number("\\sqrt{12}", closed_form=True))
    assert not numbers_equal(parse_number("2\\sqrt{3}", closed_form=True), parse_number("\\sqrt{13}", closed_form=True))


def test_rel_tol_only_loosens():
    tol = Fraction(1, 10**6)
    assert numbers_equal(parse_number("12345.68"), parse_number("12345.67"), rel_tol=tol)
    assert not numbers_equal(parse_number("12345.7"), parse_number("12345.67"), rel_tol=tol)


@pytest.mark.parametrize(
    "text, value",
    [
        ("\\sqrt{4}", 2),
        ("\\sqrt[3]{27}", 3),
        ("4^{1/2}", 2),
        ("2+3", 5),
        ("2-3", -1),
        ("1\\frac{1}{2}", Fraction(3, 2)),  # a mixed number
        ("-1\\frac{1}{2}", Fraction(-3, 2)),
        ("2(3+1)", 8),
        ("5!", 120),
        ("\\frac{\\sqrt{9}}{2}", Fraction(3, 2)),
    ],
)
def test_closed_forms_that_are_rational_stay_exact(text, value):
    n = parse_number(text, closed_form=True)
    assert n.exact and n.value == value


@pytest.mark.parametrize(
    "text, approx",
    [("3\\sqrt{13}", 10.816653826391969), ("\\frac{5\\sqrt{42}}{27}", 1.2001371663718259), ("\\pi", 3.141592653589793),
     ("\\frac94\\pi", 7.0685834705770345), ("\\sqrt 2+\\sqrt 5", 3.6502815398728847), ("e^{2}", 7.38905609893065),
     ("2^{1/2}", 1.4142135623730951)],
)
def test_closed_forms(text, approx):
    n = parse_number(text, closed_form=True)
    assert not n.exact and abs(float(n.value) - approx) < 1e-14


@pytest.mark.parametrize(
    "text",
    ["\\sqrt{5^{5^{5^{5}}}}", "x^{5^{5^{5^{5}}}}", "\\log(10^{10^{10}})", "\\sqrt{2}\\cdot 9^{9^{9^{9}}}", "10^10^10",
     "5^5^5^5", "x^{20000}", "e^{10^{5}}", "100000!", "x + 1e999999", "y^{(10^{6})}", "x + " + "9" * 1001],
)
def test_values_too_large_anywhere_are_found(text):
    start = time.perf_counter()
    assert value_too_large(text) is not None
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("text", ["x^{100}", "\\sqrt{2}^{10}", "2^{10} + \\pi", "\\sin(\\pi/6)", "10!", "e^{2}", "1e5 x"])
def test_ordinary_expressions_are_not_too_large(text):
    assert value_too_large(text) is None


def test_percent_rule_candidates():
    g = _n(Fraction(1, 2))
    assert gold_candidates(g, gold_percent=False, answer_percent=False) == [g]
    assert gold_candidates(g, gold_percent=True, answer_percent=True) == [g]
    assert gold_candidates(g, gold_percent=False, answer_percent=True) == [g, _n(50)]  # a% == g or a/100 == g
    assert gold_candidates(_n(50), gold_percent=True, answer_percent=False) == [_n(50), g]  # a == g or g/100


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
