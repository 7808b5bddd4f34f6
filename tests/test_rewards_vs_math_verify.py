"""benchmarks/verifier_vs_math_verify.py: per-category agreement and the differing cases."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("verifier_vs_math_verify", ROOT / "benchmarks" / "verifier_vs_math_verify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_side_by_side_prints_agreement_per_category_and_reasons(tmp_path, capsys):
    rows = [
        # plain math-verify credits a scale word it ignores; the policy does not
        {"category": "scale", "completion": "\\boxed{72 \\text{ thousand}}", "gold": "72", "reward": 0.0,
         "outcome": "wrong", "note": "thousand is not a unit"},
        {"category": "scale", "completion": "\\boxed{72 \\text{ thousand}}", "gold": "72000", "reward": 1.0,
         "outcome": "correct", "note": "thousand multiplies"},
        {"category": "box", "completion": "so \\boxed{7}", "gold": "7", "reward": 1.0, "outcome": "correct", "note": "box"},
    ]
    cases = tmp_path / "cases.jsonl"
    cases.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _script().main(["--cases", str(cases), "--timeout", "60"])
    out = capsys.readouterr().out
    assert "3 cases from cases.jsonl" in out
    assert "box                1  100.0% (1/1)" in out
    assert "scale              2  100.0% (2/2)" in out
    assert "all                3  100.0% (3/3)" in out
    # every case a verifier gets wrong is listed with both verdicts and reasons
    listed = out.split("cases where a verifier differs")[1]
    assert "box" not in listed.split("- [")[0] and "so \\\\boxed{7}" not in listed
    for line in listed.splitlines():
        if line.startswith("    rlvr"):
            assert " ok " in line  # ours agree with the table
    assert "math-verify" in listed and "BAD" in listed and "answer parsed" in listed
