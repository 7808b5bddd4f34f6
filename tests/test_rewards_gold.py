"""Gold parsing: what is accepted as a gold number, what is rejected and why."""

from fractions import Fraction

import pytest

from rlvr.rewards import Gold, GoldParseError, Verifier, parse_gold


@pytest.mark.parametrize(
    "text, value, percent",
    [
        ("72", Fraction(72), False),
        ("  72\n", Fraction(72), False),
        ("-3.5", Fraction(-7, 2), False),
        ("\u22123.5", Fraction(-7, 2), False),  # Unicode minus
        ("+4", Fraction(4), False),
        ("0.5", Fraction(1, 2), False),
        (".25", Fraction(1, 4), False),
        ("72.0", Fraction(72), False),
        ("1/3", Fraction(1, 3), False),
        ("-1/3", Fraction(-1, 3), False),
        ("\\frac{1}{3}", Fraction(1, 3), False),
        ("-\\dfrac{3}{4}", Fraction(-3, 4), False),
        ("\\frac12", Fraction(1, 2), False),
        ("\\frac{-1}{2}", Fraction(-1, 2), False),
        ("7,425,000", Fraction(7425000), False),
        ("7 425 000", Fraction(7425000), False),
        ("7\\,425\\,000", Fraction(7425000), False),
        ("7{,}425", Fraction(7425), False),
        ("1,234.5", Fraction(24690, 20), False),
        ("1.5e3", Fraction(1500), False),
        ("2E-2", Fraction(1, 50), False),
        ("50%", Fraction(50), True),
        ("50\\%", Fraction(50), True),
        ("12.5 %", Fraction(25, 2), True),
        ("$72$", Fraction(72), False),
        ("\\(0.5\\)", Fraction(1, 2), False),
        ("$50\\%$", Fraction(50), True),
        ("\\boxed{5}", Fraction(5), False),  # MATH-style golds keep their box
    ],
)
def test_accepted(text, value, percent):
    gold = parse_gold(text)
    assert gold == Gold(value=value, percent=percent, text=text)
    assert gold.is_integer == (value.denominator == 1)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("%", "empty"),
        ("seven", "letters"),
        ("72 apples", "letters"),
        ("72 cm", "letters"),
        ("x = 5", "letters"),
        ("\\sqrt{2}", "letters"),
        ("2\\pi", "letters"),
        ("1, 2", "not one number"),
        ("1,5", "not one number"),  # no decimal comma
        ("7,42,500", "not one number"),
        ("2+3", "not one number"),
        ("1/2/3", "not one number"),
        ("--5", "not one number"),
        ("1/0", "denominator of zero"),
        ("\\frac{1}{0}", "denominator of zero"),
        ("1e999999999", "out of range"),
        ("9" * 1001, "out of range"),
    ],
)
def test_rejected_with_reason(text, reason):
    with pytest.raises(GoldParseError, match=reason) as info:
        parse_gold(text)
    assert isinstance(info.value, ValueError)
    assert repr(text)[:40] in str(info.value) or len(text) > 80  # the gold is quoted


def test_rejects_non_strings():
    with pytest.raises(GoldParseError, match="must be a string"):
        parse_gold(72)  # type: ignore[arg-type]


def test_unparseable_gold_never_rewards():
    # Peers have shipped "1.0 when the gold can't be parsed"; here it is error/0 whatever the answer.
    verifier = Verifier()
    for gold in ("seven", "", "\\sqrt{2}", None):
        for completion in ("\\boxed{seven}", "\\boxed{}", "no answer", "\\boxed{\\sqrt{2}}"):
            result = verifier.verify(completion, gold)
            assert result.reward == 0.0 and result.outcome == "error", (gold, completion, result)


def test_gold_objects_and_strings_agree():
    verifier = Verifier()
    completions = ["\\boxed{0.5}", "\\boxed{50\\%}", "\\boxed{3}"]
    for gold_text in ("1/2", "50%", "3"):
        by_text = verifier.verify_batch(completions, [gold_text] * 3)
        by_obj = verifier.verify_batch(completions, [parse_gold(gold_text)] * 3)
        assert [r.reward for r in by_text] == [r.reward for r in by_obj]
