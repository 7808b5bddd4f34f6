"""Shaping rewards for tool-using rollouts, as ordinary weighted reward functions.

    reward:
      functions:
        - {name: rlvr.rewards:numeric_reward, weight: 1.0}
        - {name: rlvr.rewards:tool_format, weight: 0.1}      # +0.1 for a clean trajectory
        - {name: rlvr.rewards:tool_call_cost, weight: 0.05}  # -0.05 per call

They read per-response columns the trainer adds when tools are on (``cfg.tools.enabled``):
``tool_calls`` (calls the trajectory made), ``tool_errors`` (observations whose status is not
"ok") and ``end_reason`` (why the rollout ended: "answer", "length", "max_turns", ...; see
``rlvr.batch.Response``). Without them (tools off) they raise ``RewardFunctionError`` saying so.
"""

from __future__ import annotations

import numbers
from typing import Any

from rlvr.rewards.compose import RewardFunctionError

TOOL_COLUMNS = ("tool_calls", "tool_errors", "end_reason")


def _column(name: str, fn: str, n: int, columns: dict[str, Any]) -> list:
    """``columns[name]``, one value per completion, or a RewardFunctionError saying what to do."""
    if name not in columns:
        raise RewardFunctionError(
            f"reward function rlvr.rewards:{fn} needs the per-response column {name!r} "
            f"(with {', '.join(c for c in TOOL_COLUMNS if c != name)}), which the trainer passes only when "
            "tools are on (tools.names or tools.services set); turn tools on, or remove "
            f"rlvr.rewards:{fn} from reward.functions")
    values = list(columns[name])
    if len(values) != n:
        raise RewardFunctionError(f"reward function rlvr.rewards:{fn}: column {name!r} has {len(values)} values "
                                  f"for {n} completions; it must have one per completion")
    return values


def _counts(name: str, fn: str, n: int, columns: dict[str, Any]) -> list[int]:
    values = _column(name, fn, n, columns)
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise RewardFunctionError(f"reward function rlvr.rewards:{fn}: column {name!r} holds {v!r} at index {i}; "
                                      "expected a count (an integer >= 0)")
    return [int(v) for v in values]


def tool_format(completions: list[str], answers: list[str], **columns: Any) -> list[float]:
    """1.0 for a trajectory that ended with an answer turn (``end_reason == "answer"``) and made no
    failed call (``tool_errors == 0``: every observation's status was "ok"), else 0.0.

    A trajectory without calls that answers counts as clean: the term rewards well-formed tool
    use, not tool use (``tool_call_cost`` prices calls). Budget ends ("length", "max_turns",
    "max_calls", ...) get 0.0.
    """
    n = len(completions)
    ends = _column("end_reason", "tool_format", n, columns)
    errors = _counts("tool_errors", "tool_format", n, columns)
    return [1.0 if end == "answer" and e == 0 else 0.0 for end, e in zip(ends, errors)]


def tool_call_cost(completions: list[str], answers: list[str], **columns: Any) -> list[float]:
    """``-tool_calls``: with weight w > 0 each call costs w (``{name: rlvr.rewards:tool_call_cost,
    weight: 0.05}``: three calls cost 0.15). Failed calls count as calls."""
    return [-float(c) for c in _counts("tool_calls", "tool_call_cost", len(completions), columns)]
