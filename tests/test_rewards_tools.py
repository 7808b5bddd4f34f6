"""Shaping rewards for tool use (tool_format, tool_call_cost): hand-computed values, in a composer, and
clear errors when the tool columns are missing."""

import pytest

from rlvr.rewards import (
    RewardComposer,
    RewardFunctionError,
    tool_call_cost,
    tool_format,
)

# Four trajectories: answered after 2 clean calls; answered after 3 calls, one failed; answered
# without a call; cut by the call budget after 4 clean calls.
COLUMNS = {"tool_calls": [2, 3, 0, 4], "tool_errors": [0, 1, 0, 0],
           "end_reason": ["answer", "answer", "answer", "max_calls"], "id": ["a", "b", "c", "d"]}
COMPLETIONS = ["\\boxed{7}", "\\boxed{7}", "\\boxed{8}", "no answer yet"]
ANSWERS = ["7", "7", "7", "7"]


def test_tool_format_by_hand():
    assert tool_format(COMPLETIONS, ANSWERS, **COLUMNS) == [1.0, 0.0, 1.0, 0.0]
    # each condition alone fails it: a clean trajectory cut by a budget, an answered one with a failed call
    assert tool_format(["x", "x"], ["1", "1"], tool_calls=[1, 1], tool_errors=[0, 2],
                       end_reason=["length", "answer"]) == [0.0, 0.0]


def test_tool_call_cost_by_hand():
    assert tool_call_cost(COMPLETIONS, ANSWERS, **COLUMNS) == [-2.0, -3.0, -0.0, -4.0]


def test_composer_with_numeric_reward_and_shaping_terms():
    composer = RewardComposer([("rlvr.rewards:numeric_reward", 1.0), ("rlvr.rewards:tool_format", 0.2),
                               ("rlvr.rewards:tool_call_cost", 0.05)])
    total, metrics = composer(COMPLETIONS, ANSWERS, **COLUMNS)
    # numeric: 1, 1, 0, 0; format: 1, 0, 1, 0; calls: 2, 3, 0, 4
    #   1 + 0.2 - 0.10 = 1.10;  1 + 0 - 0.15 = 0.85;  0 + 0.2 - 0 = 0.20;  0 + 0 - 0.20 = -0.20
    assert total == pytest.approx([1.10, 0.85, 0.20, -0.20])
    assert metrics["reward/numeric_reward"] == pytest.approx(0.5)
    assert metrics["reward/tool_format"] == pytest.approx(0.5)
    assert metrics["reward/tool_call_cost"] == pytest.approx(-9 / 4)  # unweighted mean: the mean calls, negated


@pytest.mark.parametrize("fn, missing", [(tool_format, "end_reason"), (tool_call_cost, "tool_calls")])
def test_tools_off_is_a_clear_error(fn, missing):
    with pytest.raises(RewardFunctionError) as info:
        fn(["\\boxed{1}"], ["1"], id=["a"], source=["s"])  # the columns of a run without tools
    message = str(info.value)
    assert f"rlvr.rewards:{fn.__name__}" in message and repr(missing) in message
    assert "tools.names or tools.services" in message and "remove" in message  # the two fixes


def test_tool_format_needs_tool_errors_too():
    with pytest.raises(RewardFunctionError, match="'tool_errors'"):
        tool_format(["x"], ["1"], end_reason=["answer"], tool_calls=[0])


def test_composer_raises_the_clear_error_when_tools_are_off():
    composer = RewardComposer([("rlvr.rewards:numeric_reward", 1.0), ("rlvr.rewards:tool_call_cost", 0.05)])
    with pytest.raises(RewardFunctionError, match="only when tools are on"):
        composer(["\\boxed{1}"], ["1"], id=["a"])


@pytest.mark.parametrize("fn, columns, message", [
    (tool_format, {"tool_errors": [0, 0], "end_reason": ["answer"]}, "'tool_errors' has 2 values for 1"),
    (tool_format, {"tool_errors": [None], "end_reason": ["answer"]}, "'tool_errors' holds None at index 0"),
    (tool_call_cost, {"tool_calls": [1.5]}, "'tool_calls' holds 1.5 at index 0"),
    (tool_call_cost, {"tool_calls": [-1]}, "'tool_calls' holds -1 at index 0"),
    (tool_call_cost, {"tool_calls": [True]}, "'tool_calls' holds True"),
])
def test_bad_columns_are_named(fn, columns, message):
    with pytest.raises(RewardFunctionError, match=message):
        fn(["x"], ["1"], **columns)
