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
        # the answers' normalisation: units, labels, assignments, separators, wrappers
        ("72 apples", Fraction(72), False),
        ("72 cm", Fraction(72), False),
        ("x = 5", Fraction(5), False),
        ("$125$ miles", Fraction(125), False),
        ("$15\\mbox{ cm}^2$", Fraction(15), False),
        ("$x = 11$", Fraction(11), False),
        ("$$0.06 \\text{ yuan}$$", Fraction(3, 50), False),
        ("11,\\! 111", Fraction(11111), False),
        ("32,\\!349", Fraction(32349), False),
        ("So the answer is: \\[ \\boxed{32349} \\]", Fraction(32349), False),
        ("$\\text{13}$", Fraction(13), False),
        ("$90^\\circ$", Fraction(90), False),
        ("\uff17\uff12", Fraction(72), False),  # full-width digits
        ("72 thousand", Fraction(72000), False),
        ("2+3", Fraction(5), False),  # an exact closed form
        ("\\sqrt{4}", Fraction(2), False),
    ],
)
def test_accepted(text, value, percent):
    gold = parse_gold(text)
    assert gold == Gold(value=value, percent=percent, text=text)
    assert gold.exact and gold.is_integer == (value.denominator == 1)


@pytest.mark.parametrize(
    "text, approx",
    [
        ("\\sqrt{3}", 1.7320508075688772),
        ("$\\sqrt{3}$", 1.7320508075688772),
        ("3\\sqrt{13}", 10.816653826391969),
        ("$\\frac{5\\sqrt{42}}{27}$", 1.2001371663718259),
        ("\\pi", 3.141592653589793),
        ("2\\pi", 6.283185307179586),
        ("$\\frac{9}{4}\\pi$", 7.0685834705770345),
        ("\\sqrt{2}+\\sqrt{5}", 3.6502815398728847),
        ("\\sqrt[3]{2}", 1.2599210498948732),
    ],
)
def test_closed_form_golds_are_numbers(text, approx):
    gold = parse_gold(text)
    assert not gold.exact and not gold.is_integer and not gold.percent
    assert abs(float(gold.value) - approx) < 1e-15
    assert abs(gold.value - Fraction(approx)) < Fraction(1, 10**15)


def test_decimal_flag_marks_golds_written_with_a_point():
    assert parse_gold("0.5").decimal and parse_gold("72.0").decimal and parse_gold("1.5e3").decimal
    assert not parse_gold("1/2").decimal and not parse_gold("72").decimal and not parse_gold("\\sqrt{2}").decimal


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("%", "empty"),
        ("seven", "letters"),
        ("x + 1", "letters"),
        ("$2-2p$", "letters"),
        ("\\sin(x)", "letters"),
        ("1, 2", "not one number"),
        ("$-2, 1$", "not one number"),
        ("1 \\pm \\sqrt{19}", "not one number"),
        ("\\{1, 2\\}", "not one number"),
        ("x=1, y=2", "not one number"),
        ("\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).", "several boxed values"),
        ("\\boxed{1} papers and \\boxed{2} bins", "several boxed values"),
        ("72 thousandths", "not one number"),
        ("Let x be the number of apples. Then 2x = 10. So x = 5.", "whole solution text"),
        ("Since 3 + 4 = 7 " + "and so on " * 40 + "the answer is \\boxed{7}", "whole solution text"),
        ("1,5", "not one number"),  # no decimal comma
        ("7,42,500", "not one number"),
        ("1/2/3", "not one number"),
        ("--5", "not one number"),
        ("1/0", "denominator of zero"),
        ("\\frac{1}{0}", "denominator of zero"),
        ("1e999999999", "out of range"),
        ("9" * 1001, "out of range"),
        ("\\boxed{" * 50_000, "longer than 2000"),
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
    for gold in ("seven", "", "x^2", "1, 2", None):
        for completion in ("\\boxed{seven}", "\\boxed{}", "no answer", "\\boxed{x^2}", "\\boxed{1, 2}", "\\boxed{1}"):
            result = verifier.verify(completion, gold)
            assert result.reward == 0.0 and result.outcome == "error", (gold, completion, result)


def test_gold_objects_and_strings_agree():
    verifier = Verifier()
    completions = ["\\boxed{0.5}", "\\boxed{50\\%}", "\\boxed{3}"]
    for gold_text in ("1/2", "50%", "3"):
        by_text = verifier.verify_batch(completions, [gold_text] * 3)
        by_obj = verifier.verify_batch(completions, [parse_gold(gold_text)] * 3)
        assert [r.reward for r in by_text] == [r.reward for r in by_obj]
