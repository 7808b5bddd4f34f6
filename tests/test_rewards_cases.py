"""The verifier's case table: tests/data/verifier_cases.jsonl, one row per rule and direction.

Each row: completion, gold, expected reward, expected outcome, a note saying which rule it
checks, and optionally the extraction policy (default "boxed"). The whole table is
verified in one batch per policy (so slow-path rows share the worker pool), then every
row is its own test so a failure names the rule.
"""

import json
from pathlib import Path

import pytest

from rlvr.rewards import Verifier

CASES_PATH = Path(__file__).parent / "data" / "verifier_cases.jsonl"
# The policy table (README, "The numeric verifier"): held-out-style cases by category, each rule
# in both directions; benchmarks/verifier_vs_math_verify.py compares plain math-verify on both.
POLICY_PATH = Path(__file__).parent / "data" / "verifier_policy_cases.jsonl"
CASES = [json.loads(line) for path in (CASES_PATH, POLICY_PATH)
         for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def results():
    out = {}
    for policy in ("boxed", "last_number"):
        rows = [(i, c) for i, c in enumerate(CASES) if c.get("policy", "boxed") == policy]
        with Verifier(answer_extraction=policy, timeout_s=2.0, num_workers=1, batch_timeout_s=None) as verifier:
            verdicts = verifier.verify_batch([c["completion"] for _, c in rows], [c["gold"] for _, c in rows])
        out.update({i: v for (i, _), v in zip(rows, verdicts)})
    return out


def test_table_is_large_and_balanced():
    assert len(CASES) >= 350
    rewards = [c["reward"] for c in CASES]
    assert rewards.count(1.0) >= 150 and rewards.count(0.0) >= 120  # both directions
    assert {c["outcome"] for c in CASES} == {"correct", "wrong", "no_answer", "timeout", "error"}
    assert sum(c.get("policy") == "last_number" for c in CASES) >= 8
    for c in CASES:
        assert set(c) <= {"completion", "gold", "reward", "outcome", "note", "policy", "category"}
        assert c["note"], c


def test_every_policy_category_has_both_directions():
    by_category: dict = {}
    for c in CASES:
        if "category" in c:
            by_category.setdefault(c["category"], set()).add(c["reward"])
    assert len(by_category) >= 10
    for category, rewards in by_category.items():
        if category != "last_number":
            assert rewards == {0.0, 1.0}, category


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{i}:{c['note'][:40]}" for i, c in enumerate(CASES)])
def test_case(results, index):
    case, got = CASES[index], results[index]
    assert (got.reward, got.outcome) == (case["reward"], case["outcome"]), (
        f"{case['note']}: completion {case['completion'][-80:]!r} vs gold {case['gold']!r} -> {got}"
    )
