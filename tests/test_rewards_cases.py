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
CASES = [json.loads(line) for line in CASES_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def results():
    out = {}
    for policy in ("boxed", "last_number"):
        rows = [(i, c) for i, c in enumerate(CASES) if c.get("policy", "boxed") == policy]
        with Verifier(answer_extraction=policy, timeout_s=2.0, num_workers=1) as verifier:
            verdicts = verifier.verify_batch([c["completion"] for _, c in rows], [c["gold"] for _, c in rows])
        out.update({i: v for (i, _), v in zip(rows, verdicts)})
    return out


def test_table_is_large_and_balanced():
    assert len(CASES) >= 120
    rewards = [c["reward"] for c in CASES]
    assert rewards.count(1.0) >= 40 and rewards.count(0.0) >= 40  # both directions
    assert {c["outcome"] for c in CASES} == {"correct", "wrong", "no_answer", "timeout"}
    assert sum(c.get("policy") == "last_number" for c in CASES) >= 8
    for c in CASES:
        assert set(c) <= {"completion", "gold", "reward", "outcome", "note", "policy"}
        assert c["note"], c


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{i}:{c['note'][:40]}" for i, c in enumerate(CASES)])
def test_case(results, index):
    case, got = CASES[index], results[index]
    assert (got.reward, got.outcome) == (case["reward"], case["outcome"]), (
        f"{case['note']}: completion {case['completion'][-80:]!r} vs gold {case['gold']!r} -> {got}"
    )
