"""Loading custom rewards by "module:function", combining them, and numeric_reward itself."""

import textwrap

import pytest

from rlvr.rewards import (
    RewardComposer,
    RewardFunctionError,
    Verifier,
    load_reward_function,
    numeric_reward,
)

MODULE = textwrap.dedent(
    '''
    import math

    def length_reward(completions, answers, **columns):
        return [min(len(c), 10) / 10 for c in completions]

    def uses_columns(completions, answers, difficulty, **columns):
        return [float(d) for d in difficulty]

    def wrong_length(completions, answers, **columns):
        return [1.0]

    def not_a_list(completions, answers, **columns):
        return 1.0

    def has_nan(completions, answers, **columns):
        return [math.nan for _ in completions]

    def has_none(completions, answers, **columns):
        return [None for _ in completions]

    def correct(completions, answers, **columns):  # collides with reward/correct
        return [0.0 for _ in completions]

    class Scorer:
        @staticmethod
        def score(completions, answers, **columns):
            return [0.5 for _ in completions]

    NOT_CALLABLE = 3
    '''
)


@pytest.fixture()
def custom(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    (tmp_path / "broken_rewards.py").write_text("import not_a_real_dependency_xyz\n")
    (tmp_path / "raising_rewards.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_load_reward_function(custom):
    fn = load_reward_function("my_rewards:length_reward")
    assert fn(["abc"], ["1"]) == [0.3]
    assert load_reward_function("rlvr.rewards:numeric_reward") is numeric_reward
    assert load_reward_function("my_rewards:Scorer.score")(["a"], ["1"]) == [0.5]


@pytest.mark.parametrize(
    "path, message",
    [
        ("my_rewards", "expected 'module:function'"),
        ("my_rewards:a:b", "expected 'module:function'"),
        (":length_reward", "expected 'module:function'"),
        ("no_such_module_xyz:fn", "module 'no_such_module_xyz' not found"),
        ("broken_rewards:fn", "importing 'broken_rewards' failed: No module named 'not_a_real_dependency_xyz'"),
        ("raising_rewards:fn", "raised RuntimeError: boom at import"),
        ("my_rewards:lenght_reward", "has no attribute 'lenght_reward'; did you mean 'length_reward'"),
        ("my_rewards:NOT_CALLABLE", "'NOT_CALLABLE' is not callable (it is int 3)"),
    ],
)
def test_load_errors_name_the_path(custom, path, message):
    with pytest.raises(RewardFunctionError) as info:
        load_reward_function(path)
    assert message in str(info.value) and repr(path) in str(info.value)


def test_composer_weighted_sum_and_metrics(custom):
    composer = RewardComposer([("rlvr.rewards:numeric_reward", 1.0), ("my_rewards:length_reward", 0.5)])
    completions = ["\\boxed{7}", "\\boxed{8}", "no box at all"]
    total, metrics = composer(completions, ["7", "7", "7"])
    assert total == pytest.approx([1.0 + 0.5 * 0.9, 0.0 + 0.5 * 0.9, 0.0 + 0.5 * 1.0])
    assert metrics["reward/numeric_reward"] == pytest.approx(1 / 3)
    assert metrics["reward/length_reward"] == pytest.approx((0.9 + 0.9 + 1.0) / 3)
    # the numeric reward's outcome accounting comes along
    assert metrics["reward/correct"] == pytest.approx(1 / 3)
    assert metrics["reward/wrong"] == pytest.approx(1 / 3)
    assert metrics["reward/no_answer"] == pytest.approx(1 / 3)
    assert metrics["reward/has_boxed"] == pytest.approx(2 / 3)
    assert metrics["reward/fast_path"] == 1.0
    assert metrics["reward/timeout"] == metrics["reward/error"] == 0.0


def test_composer_passes_columns(custom):
    composer = RewardComposer([("my_rewards:uses_columns", 2.0)])
    total, metrics = composer(["a", "b"], ["1", "2"], difficulty=[1, 3], image=[None, None])
    assert total == [2.0, 6.0] and metrics == {"reward/uses_columns": 2.0}


@pytest.mark.parametrize(
    "name, message",
    [
        ("wrong_length", "returned 1 rewards for 2 completions"),
        ("not_a_list", "returned float; expected a list of 2 floats"),
        ("has_nan", "returned nan at index 0; rewards must be finite floats"),
        ("has_none", "returned None at index 0"),
    ],
)
def test_composer_checks_what_functions_return(custom, name, message):
    composer = RewardComposer([(f"my_rewards:{name}", 1.0)])
    with pytest.raises(RewardFunctionError) as info:
        composer(["a", "b"], ["1", "2"])
    assert message in str(info.value) and f"my_rewards:{name}" in str(info.value)


def test_composer_rejects_bad_specs(custom):
    with pytest.raises(RewardFunctionError, match="no reward functions"):
        RewardComposer([])
    with pytest.raises(RewardFunctionError, match="weight must be a finite number"):
        RewardComposer([("my_rewards:length_reward", float("inf"))])
    with pytest.raises(RewardFunctionError, match="collide"):
        RewardComposer([("my_rewards:correct", 1.0)])
    with pytest.raises(RewardFunctionError, match="listed twice"):
        RewardComposer([("my_rewards:length_reward", 1.0), ("my_rewards:length_reward", 1.0)])
    with pytest.raises(RewardFunctionError, match="not found"):
        RewardComposer([("nope_xyz:fn", 1.0)])


def test_numeric_reward_signature_and_the_composers_outcomes():
    rewards = numeric_reward(["\\boxed{1/2}", "The answer is 3.", "7", "I count 7"], ["0.5", "4", "7", "7"],
                             image=["ignored"] * 4)
    assert rewards == [1.0, 0.0, 1.0, 0.0]  # "7" alone is an answer; "I count 7" is reasoning
    composer = RewardComposer([("rlvr.rewards:numeric_reward", 1.0)])
    total, metrics = composer(["\\boxed{1/2}", "The answer is 3.", "7", "I count 7"], ["0.5", "4", "7", "7"])
    assert total == [1.0, 0.0, 1.0, 0.0]
    # correct, wrong, correct, no_answer: the outcomes of the composer's own verifier
    assert (metrics["reward/correct"], metrics["reward/wrong"], metrics["reward/no_answer"]) == (0.5, 0.25, 0.25)


def test_the_composer_scores_with_the_verifier_it_is_given():
    verifier = Verifier(answer_extraction="last_number", rel_tol=1e-3, timeout_s=2.0, num_workers=1)
    composer = RewardComposer([("rlvr.rewards:numeric_reward", 1.0)], verifier)
    assert composer.verifier is verifier
    assert composer(["I count 7", "about 0.3334"], ["7", "1/3"])[0] == [1.0, 1.0]  # its settings, not the defaults
    assert numeric_reward(["I count 7"], ["7"]) == [0.0]  # the library default (boxed extraction) is untouched
    with pytest.raises(ValueError, match="answer_extraction"):
        Verifier(answer_extraction="nope")
