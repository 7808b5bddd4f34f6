"""The verifier as a reward: ``numeric_reward``, outcome metrics, and verifiers made from a run's config.

The trainer and the evaluator own their verifier (``verifier_from_config``); the default one
here, with default settings, serves ``numeric_reward`` and ``verify_batch`` called on their own.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Sequence

from rlvr.rewards.gold import Gold
from rlvr.rewards.verifier import OUTCOMES, Verifier, VerifyResult


def outcome_metrics(results: Sequence[VerifyResult]) -> dict[str, float]:
    """Per-batch shares for step metrics: reward/<outcome> for each of OUTCOMES, plus
    reward/has_boxed and reward/fast_path. All in [0, 1]; all 0.0 for an empty batch."""
    n = len(results)
    counts = collections.Counter(r.outcome for r in results)
    metrics = {f"reward/{o}": (counts[o] / n if n else 0.0) for o in OUTCOMES}
    metrics["reward/has_boxed"] = sum(r.has_boxed for r in results) / n if n else 0.0
    metrics["reward/fast_path"] = sum(r.fast_path for r in results) / n if n else 0.0
    return metrics


def verifier_from_config(reward) -> Verifier:
    """The verifier a run's ``reward`` config section describes (``rlvr.config.RewardConfig``)."""
    return Verifier(answer_extraction=reward.answer_extraction, rel_tol=reward.rel_tol, timeout_s=reward.timeout_s,
                    num_workers=reward.num_workers, batch_timeout_s=reward.batch_timeout_s)


_default: Verifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> Verifier:
    """A verifier with default settings, created on first use (one per process)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Verifier()
        return _default


def verify_batch(completions: Sequence[str], golds: Sequence[Gold | str]) -> list[VerifyResult]:
    """``default_verifier().verify_batch``."""
    return default_verifier().verify_batch(completions, golds)


def numeric_reward(completions: list[str], answers: list[str], **columns: Any) -> list[float]:
    """Reward 1.0 when the completion's final answer equals the gold number, else 0.0 (default settings).

    The shared custom-reward signature: ``answers`` are the gold strings (or Gold objects);
    other dataset columns arrive as keyword arguments and are ignored. Named in
    ``reward.functions``, it is computed by the ``RewardComposer``'s own verifier instead,
    with the run's settings and its outcome metrics.
    """
    return [r.reward for r in default_verifier().verify_batch(completions, answers)]
