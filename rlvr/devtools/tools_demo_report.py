"""The tools demo's table: held-out reward of each stage, like OpenThinkIMG's, and calls over training.

    python -m rlvr.devtools.tools_demo_report RUN_DIR

``RUN_DIR`` is what ``make demo-tools`` fills: ``base/metrics.json`` and ``sft-budget/metrics.json``
(``python -m rlvr.evaluate`` of the untrained model and of the SFT model, with the RL recipe's tools
and budgets), ``rl-no-tools``, ``sft`` and ``sft-rl`` (training runs whose last evaluation, on the
same held-out prompts with the same seed, is in their ``metrics.jsonl``). Prints eval/pass@1 (mean
reward of eval.k samples per prompt), greedy reward, tool calls per sample and the share of samples
a budget ended (``max_calls``, ``max_tokens``, ...: no answer to score) for each, then the (c) run's
calls per sample and reward over its training steps. (b) is the SFT model under the RL run's
budgets, as (c) is evaluated; the SFT run's own evaluation (the teacher's budgets) is shown below
it and not compared. Exit status 1 when (c) does not beat both (a) and (b) by ``--margin``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROWS = (
    ("base", "base model, tools offered"),
    ("rl-no-tools", "(a) RL without tools"),
    ("sft-budget", "(b) SFT cold start only, tools"),
    ("sft", "    (b) at the teacher's budgets"),
    ("sft-rl", "(c) SFT, then RL with tools"),
)


def last_eval(run_dir: str) -> dict | None:
    """The last evaluation of a run: ``metrics.json`` (``rlvr.evaluate``) or the last ``metrics.jsonl``
    row holding ``eval/pass@1``."""
    single = os.path.join(run_dir, "metrics.json")
    if os.path.exists(single):
        with open(single, encoding="utf-8") as f:
            return json.load(f)
    rows = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(rows):
        return None
    found = None
    with open(rows, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "eval/pass@1" in row:
                found = row
    return found


def training_curve(run_dir: str, points: int = 8) -> list[tuple[int, float, float, float]]:
    """(step, tools/calls_per_sample, share of trajectories a budget ended (the ``tools/end/max_*``
    metrics summed), reward/mean) at about ``points`` evenly spread steps."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "tools/calls_per_sample" in r]
    if not rows:
        return []
    picks = sorted({round(i * (len(rows) - 1) / max(points - 1, 1)) for i in range(points)})
    return [(int(rows[i]["step"]), rows[i]["tools/calls_per_sample"],
             sum(v for k, v in rows[i].items() if k.startswith("tools/end/max_")),
             rows[i].get("reward/mean", float("nan"))) for i in picks]


def budget_share(run_dir: str, result: dict) -> float | None:
    """Share of the evaluation's samples that a budget ended (``end_reason`` "max_calls", "max_tokens",
    ...), from its predictions: ``predictions.jsonl`` (``rlvr.evaluate``) or ``eval/step_N.jsonl`` of
    the last evaluation; None without predictions or without tools (no end reasons)."""
    path = os.path.join(run_dir, "predictions.jsonl")
    if not os.path.exists(path) and "step" in result:
        path = os.path.join(run_dir, "eval", f"step_{int(result['step']):06d}.jsonl")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        ends = [json.loads(line).get("end_reason") for line in f if line.strip()]
    if not ends or None in ends:
        return None
    return sum(str(e).startswith("max_") for e in ends) / len(ends)


def _fmt(value) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def report(run_dir: str, margin: float) -> int:
    results = {key: last_eval(os.path.join(run_dir, key)) for key, _ in ROWS}
    print(f"Held-out prompts (data.val_files), the same for every row; pass@1 = mean reward of eval.k samples.\n")
    print(f"{'':34s} {'pass@1':>7s} {'greedy':>7s} {'calls/sample':>13s} {'budget-ended':>13s}")
    for key, label in ROWS:
        r = results[key]
        if r is None:
            print(f"{label:34s}  (no evaluation in {os.path.join(run_dir, key)})")
            continue
        calls = r.get("eval/tool_calls_per_sample")
        ended = budget_share(os.path.join(run_dir, key), r)
        print(f"{label:34s} {_fmt(r.get('eval/pass@1'))} {_fmt(r.get('eval/greedy'))} {_fmt(calls):>13s} "
              f"{_fmt(ended):>13s}")
    curve = training_curve(os.path.join(run_dir, "sft-rl"))
    if curve:
        print("\n(c) over RL training: step, tool calls per sample, share ended by a budget, batch reward")
        for step, calls, ended, reward in curve:
            print(f"  step {step:4d}  calls {calls:5.2f}  budget-ended {ended:5.3f}  reward {reward:5.3f}")
    score = {key: (results[key] or {}).get("eval/pass@1") for key, _ in ROWS}
    if None in (score["rl-no-tools"], score["sft-budget"], score["sft-rl"]):
        print("\nincomplete: a stage has no evaluation")
        return 1
    beats = score["sft-rl"] >= max(score["rl-no-tools"], score["sft-budget"]) + margin
    print(f"\n(c) {'beats' if beats else 'does NOT beat'} (a) and (b) by >= {margin:g}: "
          f"{score['sft-rl']:.3f} vs {score['rl-no-tools']:.3f} and {score['sft-budget']:.3f}")
    return 0 if beats else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--margin", type=float, default=0.15, help="how much (c) must beat (a) and (b) by")
    args = parser.parse_args(argv)
    return report(args.run_dir, args.margin)


if __name__ == "__main__":
    sys.exit(main())
