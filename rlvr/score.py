"""Score a predictions file with the numeric verifier.

    python -m rlvr.score PREDICTIONS.jsonl [--answer-extraction boxed|last_number]
                         [--rel-tol 1e-6] [--timeout 5] [--workers 2]

Each line is a JSON object with ``completion`` and ``answer`` (the gold; a string, or a
JSON number) and optionally ``id``. Prints accuracy and outcome counts and writes one
result per line to ``PREDICTIONS.scored.jsonl`` next to the input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


class PredictionsError(ValueError):
    """The predictions file is malformed; the message names the file and line."""


def scored_path(path: Path) -> Path:
    """``preds.jsonl`` -> ``preds.scored.jsonl`` (any other name gets ``.scored.jsonl`` appended)."""
    name = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(name + ".scored.jsonl")


def read_predictions(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for every non-blank line; raises PredictionsError on bad lines."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PredictionsError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PredictionsError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in ("completion", "answer") if k not in row]
            if missing:
                raise PredictionsError(f"{path}:{n}: missing key(s) {missing}; each line needs 'completion' and 'answer'")
            if not isinstance(row["completion"], str):
                raise PredictionsError(f"{path}:{n}: 'completion' must be a string")
            answer = row["answer"]
            if isinstance(answer, (int, float)) and not isinstance(answer, bool):
                row["answer"] = str(answer)
            elif not isinstance(answer, str):
                raise PredictionsError(f"{path}:{n}: 'answer' must be a string or a number, got {type(answer).__name__}")
            rows.append((n, row))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlvr.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="JSONL with 'completion' and 'answer' per line")
    parser.add_argument("--answer-extraction", choices=("boxed", "last_number"), default="boxed")
    parser.add_argument("--rel-tol", type=float, default=1e-6, help="relative tolerance for non-integer golds")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per answer in math-verify")
    parser.add_argument("--workers", type=int, default=2, help="math-verify worker processes")
    parser.add_argument("--output", type=Path, default=None, help="default: PREDICTIONS.scored.jsonl")
    args = parser.parse_args(argv)

    from rlvr.rewards import OUTCOMES, Verifier, outcome_metrics  # late: --help stays instant

    try:
        rows = read_predictions(args.predictions)
    except (OSError, PredictionsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with Verifier(answer_extraction=args.answer_extraction, rel_tol=args.rel_tol,
                  timeout_s=args.timeout, num_workers=args.workers) as verifier:
        results = verifier.verify_batch([r["completion"] for _, r in rows], [r["answer"] for _, r in rows])

    output = args.output or scored_path(args.predictions)
    with open(output, "w", encoding="utf-8") as f:
        for (n, row), res in zip(rows, results):
            out = {"line": n, "id": row.get("id"), "answer": row["answer"], "reward": res.reward,
                   "outcome": res.outcome, "extracted": res.extracted, "has_boxed": res.has_boxed,
                   "fast_path": res.fast_path, "detail": res.detail}
            f.write(json.dumps(out) + "\n")  # ASCII: lone surrogates cannot break the write

    total = len(results)
    correct = sum(r.reward for r in results)
    metrics = outcome_metrics(results)
    print(f"scored {total} predictions from {args.predictions} (answer_extraction={args.answer_extraction})")
    print(f"accuracy: {correct / total if total else 0.0:.4f} ({int(correct)}/{total})")
    for outcome in OUTCOMES:
        count = sum(r.outcome == outcome for r in results)
        print(f"  {outcome:<10} {count:>7}  ({metrics[f'reward/{outcome}']:.1%})")
    print(f"with \\boxed: {metrics['reward/has_boxed']:.1%}   fast path: {metrics['reward/fast_path']:.1%}")
    bad_golds = [(n, r.detail) for (n, _), r in zip(rows, results) if r.detail.startswith("unusable gold")]
    if bad_golds:
        print(f"warning: {len(bad_golds)} gold answer(s) are not numbers and scored 0; first at line "
              f"{bad_golds[0][0]}: {bad_golds[0][1]}", file=sys.stderr)
    print(f"per-line results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
