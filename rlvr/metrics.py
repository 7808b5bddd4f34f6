"""Evaluation estimators (pass@k, maj@k) and reading a run's ``metrics.jsonl``.

pass@k is the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models
Trained on Code"): with n samples of which c are correct,

    pass@k = 1 - C(n - c, k) / C(n, k)

the probability that at least one of k samples drawn without replacement from the n is
correct. Averaged over prompts. pass@1 is then the plain mean accuracy of the n samples.

maj@k (majority vote, "self-consistency"): the n samples vote with their final answers;
answers that are the same number (``3``, ``3.0``, ``6/2``) are one vote. A prompt scores 1
when the most frequent answer is correct. **Ties share the credit**: with two answers
tied on top and one of them right, the prompt scores 1/2, the expected accuracy of
breaking the tie at random. This keeps maj@k independent of sample order. Samples with
no answer do not vote; a prompt where nobody answered scores 0.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Hashable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``.

    Exact (integer binomials); raises ValueError unless 0 <= c <= n and 1 <= k <= n.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def pass_ks(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def vote_key(extracted: str | None) -> Hashable | None:
    """What a sample votes for in maj@k: the answer's exact value when it is a plain number
    (so ``3``, ``3.0`` and ``6/2`` agree), else its normalised text; None for no answer."""
    if extracted is None:
        return None
    from rlvr.rewards.expression import parse_plain_number
    from rlvr.rewards.normalize import normalize_answer
    from rlvr.rewards.numbers import AnswerRejected, NotPlainNumber

    try:
        answer = normalize_answer(extracted)
    except Exception:  # noqa: BLE001 - a vote key is best effort; fall back to the raw text
        return ("text", extracted.strip())
    if not answer.text:
        return None
    try:
        return ("number", parse_plain_number(answer.text), answer.percent)
    except (NotPlainNumber, AnswerRejected, ValueError, ArithmeticError):
        return ("text", answer.key())


def majority_correct(keys: Sequence[Hashable | None], rewards: Sequence[float]) -> float:
    """maj@n of one prompt: 1.0 if the most voted answer is correct, shared among ties.

    ``keys[i]`` is sample i's vote (``vote_key``; None = no vote), ``rewards[i]`` its reward
    (1.0 correct). Samples with the same key get the same verdict from the verifier; their
    mean is used anyway, so a disagreement cannot raise the score above the truth.
    """
    if len(keys) != len(rewards):
        raise ValueError(f"{len(keys)} vote keys but {len(rewards)} rewards")
    votes: dict[Hashable, list[float]] = defaultdict(list)
    for key, reward in zip(keys, rewards):
        if key is not None:
            votes[key].append(float(reward))
    if not votes:
        return 0.0
    top = max(len(v) for v in votes.values())
    tied = [sum(v) / len(v) for v in votes.values() if len(v) == top]
    return sum(tied) / len(tied)


@dataclass
class PromptRecord:
    """Everything evaluation keeps about one prompt."""

    id: str
    source: str
    rewards: list[float]  # one per sampled response (1.0 = correct)
    votes: list[Hashable | None]  # vote_key of each sampled response
    lengths: list[int]  # response tokens of each sampled response
    truncated: list[bool]  # response hit the token limit
    outcomes: list[str]  # verifier outcome of each sampled response
    greedy_reward: float | None = None  # the greedy response's reward, if decoded
    extra: dict[str, Any] = field(default_factory=dict)


def _summary(records: Sequence[PromptRecord], prefix: str) -> dict[str, float]:
    from rlvr.rewards import OUTCOMES

    n = min(len(r.rewards) for r in records)
    out: dict[str, float] = {}
    for k in pass_ks(n):
        out[f"{prefix}pass@{k}"] = sum(pass_at_k(len(r.rewards), int(sum(r.rewards)), k) for r in records) / len(records)
    out[f"{prefix}maj@{n}"] = sum(majority_correct(r.votes, r.rewards) for r in records) / len(records)
    greedy = [r.greedy_reward for r in records if r.greedy_reward is not None]
    if greedy:
        out[f"{prefix}greedy"] = sum(greedy) / len(greedy)
    lengths = [x for r in records for x in r.lengths]
    out[f"{prefix}response_length/mean"] = sum(lengths) / len(lengths)
    out[f"{prefix}response_length/truncated"] = sum(t for r in records for t in r.truncated) / len(lengths)
    outcomes = [o for r in records for o in r.outcomes]
    for o in OUTCOMES:
        out[f"{prefix}outcome/{o}"] = sum(x == o for x in outcomes) / len(outcomes)
    out[f"{prefix}num_prompts"] = float(len(records))
    return out


def summarize(records: Sequence[PromptRecord], prefix: str = "eval/") -> dict[str, float]:
    """Evaluation metrics over prompts, overall and (with two or more sources) per source.

    Keys (prefix ``eval/``): ``pass@1``, ``pass@2``, ... ``pass@n``, ``maj@n``, ``greedy`` (when
    greedy responses were decoded), ``response_length/mean`` (tokens), ``response_length/truncated``
    (share cut at the token limit), ``outcome/<o>`` (share of samples per verifier outcome),
    ``num_prompts``; per source the same under ``by_source/<source>/``. pass@k with k above
    a prompt's sample count is not reported; prompts must all have at least n samples.
    """
    if not records:
        return {}
    out = _summary(records, prefix)
    sources = sorted({r.source for r in records})
    if len(sources) > 1:
        for source in sources:
            subset = [r for r in records if r.source == source]
            out.update(_summary(subset, f"{prefix}by_source/{source or 'unknown'}/"))
    return out


# --------------------------------------------------------------------------- reading runs


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/metrics.jsonl`` (missing file: []). Values written as strings
    ("nan", "inf") come back as floats; a torn last line (run killed mid-write) is ignored."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    from rlvr.files import iter_jsonl

    rows, parsed = [], list(iter_jsonl(path))
    for i, (number, row, bad) in enumerate(parsed):
        if bad:
            if i == len(parsed) - 1:
                break
            raise ValueError(f"{path}:{number}: {bad}")
        for key, value in row.items():
            if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
                row[key] = float(value)
        rows.append(row)
    return rows


def best_eval(rows: Sequence[dict[str, Any]]) -> tuple[int, float] | None:
    """(step, eval/pass@1) of the best evaluation, the earliest on ties; None if never evaluated."""
    best = None
    for row in rows:
        value = row.get("eval/pass@1")
        if isinstance(value, (int, float)) and not math.isnan(value) and (best is None or value > best[1]):
            best = (int(row.get("step", 0)), float(value))
    return best


class ProgressPostfix:
    """Fields for the progress bar after each step: reward, the latest eval accuracy (carried
    over between evaluations) and seconds per step. tqdm itself shows the ETA."""

    def __init__(self) -> None:
        self.last_eval: float | None = None

    def __call__(self, row: dict[str, Any]) -> dict[str, str]:
        if isinstance(row.get("eval/pass@1"), (int, float)):
            self.last_eval = float(row["eval/pass@1"])
        if "reward/mean" not in row and isinstance(row.get("sft/nll"), (int, float)):  # SFT: no rewards
            fields = {"nll": f"{row['sft/nll']:.3f}"}
        else:
            fields = {"reward": f"{row.get('reward/mean', float('nan')):.3f}"}
        if self.last_eval is not None:
            fields["eval"] = f"{self.last_eval:.3f}"
        fields["s/step"] = f"{row.get('time/step_s', float('nan')):.1f}"
        return fields


def run_summary(run_dir: str) -> str:
    """One paragraph for the end of a run: steps, reward, best eval, where things are."""
    rows = read_metrics(run_dir)
    run_dir = os.path.abspath(run_dir)
    if not rows:
        return f"No steps were logged in {run_dir}."
    last = rows[-1]
    steps = int(last.get("step", len(rows)))
    head = [r.get("reward/mean") for r in rows[:5] if isinstance(r.get("reward/mean"), (int, float))]
    tail = [r.get("reward/mean") for r in rows[-5:] if isinstance(r.get("reward/mean"), (int, float))]
    parts = [f"Finished {steps} steps in {sum(r.get('time/step_s', 0.0) for r in rows) / 60:.1f} min."]
    if head and tail:
        parts.append(f"Mean reward went from {sum(head) / len(head):.3f} (first {len(head)} steps) "
                     f"to {sum(tail) / len(tail):.3f} (last {len(tail)}).")
    nll = [r["sft/nll"] for r in rows if isinstance(r.get("sft/nll"), (int, float))]
    if nll and not head:  # an SFT run
        parts.append(f"Training NLL went from {nll[0]:.3f} (step 1) to {nll[-1]:.3f} (step {steps}).")
    best = best_eval(rows)
    if best is not None:
        final = next((r for r in reversed(rows) if "eval/pass@1" in r), {})
        greedy = f", greedy {final['eval/greedy']:.3f}" if "eval/greedy" in final else ""
        parts.append(f"Best eval pass@1 {best[1]:.3f} at step {best[0]}; at the last evaluation "
                     f"(step {final.get('step')}) pass@1 {final['eval/pass@1']:.3f}{greedy}.")
    else:
        parts.append("No evaluation ran (set data.val_files to evaluate).")
    where = []
    for name, label in (("final", "model"), ("plots", "plots"), ("samples", "sample pages")):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            where.append(f"{label} in {path}")
    where.append(f"metrics in {os.path.join(run_dir, 'metrics.jsonl')}")
    parts.append("The " + ", ".join(where) + ".")
    return " ".join(parts)
