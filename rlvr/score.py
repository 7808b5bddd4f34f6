"""Score a predictions file with the numeric verifier.

    python -m rlvr.score PREDICTIONS.jsonl [--answer-extraction boxed|last_number]
                         [--rel-tol 0] [--timeout 5] [--workers 2]

Each line is a JSON object with ``completion`` and ``answer`` (the gold; a string, or a
JSON number) and optionally ``id``. Prints accuracy and outcome counts and writes one
result per line to ``PREDICTIONS.scored.jsonl`` next to the input.

Predictions from a run are scored the way the run scored them. The answer extraction
(and ``rel_tol``) come from, first to last: the command-line flag; the rows themselves
(``rlvr.evaluate`` and the trainer's evaluations write ``answer_extraction`` and ``rel_tol``
into every row); the run's ``config.yaml`` in the file's folder or the one above it
(``RUN/eval/step_N.jsonl`` -> ``RUN/config.yaml``, ``reward.answer_extraction``); else
the verifier's defaults (``boxed``, no extra tolerance). The output says which was used.
"""

from __future__ import annotations

import argparse
import json
import math
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
    from rlvr.files import iter_jsonl

    rows = []
    for n, row, bad in iter_jsonl(str(path)):
        if bad:
            raise PredictionsError(f"{path}:{n}: {bad}")
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


EXTRACTIONS = ("boxed", "last_number")
SETTINGS = ("answer_extraction", "rel_tol")  # what a run's scoring can differ in (its reward.* keys)


def _default(key: str) -> Any:
    """The verifier's own default for ``key``, which is also the config's (one source)."""
    import inspect

    from rlvr.rewards import Verifier

    return inspect.signature(Verifier).parameters[key].default


def _valid(key: str, value: Any) -> bool:
    if key == "answer_extraction":
        return value in EXTRACTIONS
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value < 1


def run_config(path: Path) -> Path | None:
    """The ``config.yaml`` of the run a predictions file belongs to: in its folder or the one above."""
    for folder in (path.resolve().parent, path.resolve().parent.parent):
        candidate = folder / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def scoring_settings(path: Path, rows: list[tuple[int, dict[str, Any]]], flags: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """``{"answer_extraction": (value, where it came from), "rel_tol": (...)}``.

    Order: the flag, the rows' own field (all rows must agree), the run's ``config.yaml``
    (``reward.*``), the default. Raises PredictionsError when rows disagree or carry a value
    that is not valid, or the config cannot be read.
    """
    settings: dict[str, tuple[Any, str]] = {}
    config: dict[str, Any] | None = None
    config_path = None
    for key in SETTINGS:
        if flags.get(key) is not None:
            if not _valid(key, flags[key]):
                raise PredictionsError(f"--{key.replace('_', '-')} {flags[key]!r} is not valid; expected a number in [0, 1)")
            settings[key] = (flags[key], f"--{key.replace('_', '-')}")
            continue
        found = {}
        for n, row in rows:
            if key in row:
                found.setdefault(json.dumps(row[key]), n)
        if len(found) > 1:
            (a, line_a), (b, line_b) = list(found.items())[:2]
            raise PredictionsError(f"{path}: rows were scored with different {key} ({a} at line {line_a}, {b} at line "
                                   f"{line_b}); score them separately or pass --{key.replace('_', '-')}")
        if found:
            value = json.loads(next(iter(found)))
            if not _valid(key, value):
                raise PredictionsError(f"{path}:{next(iter(found.values()))}: {key}={value!r} is not valid"
                                       + (f"; expected one of {', '.join(EXTRACTIONS)}" if key == "answer_extraction"
                                          else "; expected a number in [0, 1)"))
            settings[key] = (value, "the predictions' rows")
            continue
        if config is None:
            config_path = run_config(path)
            config = _read_reward_config(config_path) if config_path else {}
        if key in config:
            value = config[key]
            if not _valid(key, value):
                raise PredictionsError(f"{config_path}: reward.{key}={value!r} is not valid")
            settings[key] = (value, str(config_path))
        else:
            settings[key] = (_default(key), "default")
    return settings


def _read_reward_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise PredictionsError(f"{path}: the run's config could not be read ({type(e).__name__}: {e}); "
                               "pass --answer-extraction") from None
    reward = cfg.get("reward") if isinstance(cfg, dict) else None
    return reward if isinstance(reward, dict) else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlvr.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="JSONL with 'completion' and 'answer' per line")
    parser.add_argument("--answer-extraction", choices=EXTRACTIONS, default=None,
                        help="default: the rows' answer_extraction, else the run's config.yaml, else boxed")
    parser.add_argument("--rel-tol", type=float, default=None,
                        help="extra relative tolerance (default: as --answer-extraction, else the verifier's: 0)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per answer in math-verify")
    parser.add_argument("--workers", type=int, default=2, help="math-verify worker processes")
    parser.add_argument("--output", type=Path, default=None, help="default: PREDICTIONS.scored.jsonl")
    args = parser.parse_args(argv)

    from rlvr.rewards import OUTCOMES, Verifier, outcome_metrics  # late: --help stays instant

    try:
        rows = read_predictions(args.predictions)
        settings = scoring_settings(args.predictions, rows, {"answer_extraction": args.answer_extraction,
                                                             "rel_tol": args.rel_tol})
    except (OSError, PredictionsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (extraction, extraction_from), (rel_tol, rel_tol_from) = settings["answer_extraction"], settings["rel_tol"]
    with Verifier(answer_extraction=extraction, rel_tol=rel_tol,
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
    print(f"scored {total} predictions from {args.predictions}")
    print(f"answer_extraction={extraction} (from {extraction_from}), rel_tol={rel_tol:g} (from {rel_tol_from})")
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
