"""rlvr.devtools.tools_demo_report: the demo's table from the runs' evaluations, and its verdict."""

import json

from rlvr.devtools.tools_demo_report import main


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _evaluate_dir(run, pass1, greedy, calls, ends):
    """What python -m rlvr.evaluate leaves: metrics.json and predictions.jsonl (one end reason per sample)."""
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"eval/pass@1": pass1, "eval/greedy": greedy,
                                                  "eval/tool_calls_per_sample": calls}))
    _write(run / "predictions.jsonl", [{"end_reason": e} for e in ends])


def _training_dir(run, pass1, calls, ends, step=60, curve=()):
    """A training run: metrics.jsonl (train rows, then the last evaluation) and eval/step_N.jsonl."""
    rows = [{"step": s, "tools/calls_per_sample": c, "reward/mean": r, "tools/end/answer": 1 - e,
             "tools/end/max_calls": e * 0.75, "tools/end/max_tokens": e * 0.25} for s, c, e, r in curve]
    rows.append({"step": step, "eval/pass@1": pass1, "eval/greedy": pass1, "eval/tool_calls_per_sample": calls})
    _write(run / "metrics.jsonl", rows)
    if ends is not None:
        _write(run / "eval" / f"step_{step:06d}.jsonl", [{"end_reason": e} for e in ends])


def _runs(tmp_path, rl=0.9):
    _evaluate_dir(tmp_path / "base", 0.05, 0.0, 0.1, ["answer"] * 4)
    _training_dir(tmp_path / "rl-no-tools", 0.2, 0.0, None)
    _evaluate_dir(tmp_path / "sft-budget", 0.4, 0.5, 1.0, ["answer", "max_calls", "max_calls", "max_tokens"])
    _training_dir(tmp_path / "sft", 0.65, 1.5, ["answer"] * 3 + ["max_calls"], step=300)
    _training_dir(tmp_path / "sft-rl", rl, 1.0, ["answer"] * 4,
                  curve=[(1, 0.97, 0.4, 0.5), (30, 1.0, 0.2, 0.8), (60, 1.0, 0.0, 0.9)])


def test_b_is_the_sft_model_at_the_rl_budgets_and_c_must_beat_it(tmp_path, capsys):
    _runs(tmp_path, rl=0.9)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {line[:34].strip(): line[34:].split() for line in out.splitlines() if line[:1] in "(b " and len(line) > 34}
    assert lines["(b) SFT cold start only, tools"] == ["0.400", "0.500", "1.000", "0.750"]  # 3 of 4 budget-ended
    assert lines["(b) at the teacher's budgets"] == ["0.650", "0.650", "1.500", "0.250"]
    assert lines["base model, tools offered"][-1] == "0.000"
    assert "step   30  calls  1.00  budget-ended 0.200  reward 0.800" in out
    assert "(c) beats (a) and (b) by >= 0.15: 0.900 vs 0.200 and 0.400" in out
    # (b) at the teacher's budgets (0.65) is shown, not compared: 0.6 beats 0.4 + 0.15 but not 0.65 + 0.15
    _runs(tmp_path / "close", rl=0.6)
    assert main([str(tmp_path / "close")]) == 0
    _runs(tmp_path / "short", rl=0.5)
    assert main([str(tmp_path / "short")]) == 1
    assert "does NOT beat" in capsys.readouterr().out


def test_a_missing_stage_is_incomplete(tmp_path, capsys):
    _runs(tmp_path)
    (tmp_path / "sft-budget" / "metrics.json").unlink()
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "(no evaluation in" in out and "incomplete: a stage has no evaluation" in out
