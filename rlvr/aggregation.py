"""How per-token values become one number: the loss reduction and the token-mean metrics.

Peers disagree on the reduction (per-sequence mean then mean over sequences, a token mean
over the batch, or Dr.GRPO's constant divisor), so it is one explicit, tested function
here, used by every loss (``rlvr.losses``) and by the KL penalty.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.config.schema import AGGREGATIONS

# The choices are the config's (algorithm.aggregation), defined once there.
AGGREGATION_MODES: tuple[str, ...] = AGGREGATIONS

# --------------------------------------------------------------------------------------------
# Reduction
# --------------------------------------------------------------------------------------------


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "seq-mean-token-mean",
    *,
    norm_len: float | None = None,
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
) -> Tensor:
    """Reduce per-token values ``[B, T]`` to a scalar over the valid (``mask``) tokens.

    With n_i = number of valid tokens in sequence i and x_it the per-token value:

    * ``seq-mean-token-mean`` (default; SAPO, GRPO, GSPO papers):
      ``(1/B) sum_i (1/max(n_i, 1)) sum_t x_it``. A sequence with no valid token contributes
      0 to the sum but still counts in B.
    * ``token-mean`` (DAPO, CISPO): ``sum_it x_it / max(sum_i n_i, 1)``. Every token weighs the
      same, so long sequences weigh more.
    * ``seq-mean-token-sum-norm`` (Dr.GRPO): ``(1/B) sum_i (1/norm_len) sum_t x_it`` with a
      constant ``norm_len`` (default T, the mask's width), so no length bias from the divisor.

    Gradient accumulation / data parallel: a local micro-batch's mean is not a slice of the
    global mean. Pass ``global_tokens`` (valid tokens in the whole optimiser step, all ranks)
    to make ``token-mean`` divide by it, or ``global_seqs`` (sequences in the whole step) to make
    the seq-mean modes divide by it instead of B. Then summing the micro-batch results (and
    all-reducing with SUM) gives exactly the full-batch value.

    Args:
        per_token: ``[B, T]`` values; entries where ``mask`` is 0 are ignored (may be inf/NaN).
        mask: ``[B, T]`` bool or 0/1 float; nonzero means valid.
        mode: one of `AGGREGATION_MODES`.
        norm_len: divisor for ``seq-mean-token-sum-norm`` only; passing it with another mode
            is an error rather than being silently ignored.
        global_tokens: replaces the local valid-token count in ``token-mean``.
        global_seqs: replaces B in the two seq-mean modes.

    Returns:
        0-dim tensor.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"Unknown aggregation mode {mode!r}; valid modes are {AGGREGATION_MODES}.")
    if per_token.shape != mask.shape or per_token.dim() != 2:
        raise ValueError(
            f"aggregate expects per_token and mask of the same shape [B, T]; got "
            f"{tuple(per_token.shape)} and {tuple(mask.shape)}."
        )
    if norm_len is not None and mode != "seq-mean-token-sum-norm":
        raise ValueError(
            f"norm_len={norm_len} only applies to 'seq-mean-token-sum-norm', not {mode!r}; "
            "drop norm_len or change the aggregation."
        )
    for name, value in (("norm_len", norm_len), ("global_tokens", global_tokens), ("global_seqs", global_seqs)):
        if isinstance(value, (int, float)) and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}.")

    valid = mask.bool()  # [B, T]
    # where, not multiply: 0 * inf = NaN would leak padding into the result.
    x = torch.where(valid, per_token, torch.zeros_like(per_token))  # [B, T]
    batch, width = x.shape

    if mode == "token-mean":
        denom = global_tokens if global_tokens is not None else valid.sum().clamp(min=1)
        return x.sum() / denom

    if mode == "seq-mean-token-mean":
        seq_len = valid.sum(dim=-1).clamp(min=1)  # [B]; empty rows give 0 / 1 = 0
        per_seq = x.sum(dim=-1) / seq_len  # [B]
    else:  # seq-mean-token-sum-norm
        per_seq = x.sum(dim=-1) / (norm_len if norm_len is not None else width)  # [B]
    return per_seq.sum() / (global_seqs if global_seqs is not None else batch)


# --------------------------------------------------------------------------------------------
# Token-mean metrics
# --------------------------------------------------------------------------------------------


# A token-mean metric ``key`` comes with ``key + TOKEN_COUNT`` (its number of tokens), so the
# update can combine micro-batches and ranks into the exact token-weighted value of the step
# (``rlvr.step_metrics``) and leave out a metric that had no tokens at all.
TOKEN_COUNT = "#tokens"


def masked_mean(values: Tensor, selected: Tensor) -> Tensor:
    """Mean of ``values`` over ``selected`` (bool, same shape); 0 when nothing is selected."""
    values = torch.where(selected, values, torch.zeros_like(values))
    return values.sum() / selected.sum().clamp(min=1)


def token_means(means: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """``{name: (values, selected)}`` -> each name's masked mean and, under ``name + TOKEN_COUNT``, its token count."""
    metrics = {}
    for key, (values, selected) in means.items():
        metrics[key] = masked_mean(values, selected)
        metrics[key + TOKEN_COUNT] = selected.sum()
    return metrics
