"""Rewards: the numeric verifier and custom reward loading/combination.

    from rlvr.rewards import numeric_reward, parse_gold, Verifier, RewardComposer

Semantics (what counts as an answer, equivalence, percent rule, isolation) are in
"The numeric verifier" in the project README. Importing this package is cheap: math-verify and
sympy are only ever imported inside the verifier's worker processes.
"""

from rlvr.rewards.compose import RewardComposer, RewardFunctionError, load_reward_function
from rlvr.rewards.extract import EXTRACTION_POLICIES, extract_answer
from rlvr.rewards.gold import Gold, GoldParseError, parse_gold
from rlvr.rewards.numeric import default_verifier, numeric_reward, outcome_metrics, verifier_from_config, verify_batch
from rlvr.rewards.tools import tool_call_cost, tool_format
from rlvr.rewards.verifier import OUTCOMES, Verifier, VerifyResult

__all__ = [
    "EXTRACTION_POLICIES",
    "OUTCOMES",
    "Gold",
    "GoldParseError",
    "RewardComposer",
    "RewardFunctionError",
    "Verifier",
    "VerifyResult",
    "default_verifier",
    "extract_answer",
    "load_reward_function",
    "numeric_reward",
    "outcome_metrics",
    "parse_gold",
    "tool_call_cost",
    "tool_format",
    "verifier_from_config",
    "verify_batch",
]
