"""Importance weights for the gap between the engine that sampled and the policy the update starts from.

The rollout engine samples token o_t from its own distribution pi_rollout (vLLM's kernels,
its precision, the top-k/top-p filter), while every loss's ratio r_t = pi_theta / pi_old
assumes the samples came from pi_old, the training forward at the rollout weights. The
correction multiplies each token's loss term by a detached weight built from

    w_t = pi_old(o_t) / pi_rollout(o_t) = exp(old_logprobs - rollout_logprobs)

(the "decoupled" three-policy form: the loss keeps its trust region around pi_old, the
weight moves the expectation from pi_rollout to pi_old). Modes (``algorithm.rollout_correction``):

    token_truncate     w~_t = min(w_t, cap)                                   TIS (Yao et al. 2025)
    token_mask         w~_t = w_t if mask_low <= w_t <= mask_high else 0      MIS
    sequence_truncate  w~_t = min(w_i, cap)
    sequence_mask      w~_t = w_i if mask_low <= w_i <= mask_high else 0
                       with w_i = exp((1/n_i) sum_t log w_t), the geometric mean over the
                       response's n_i tokens, the same for all of its tokens

The sequence weight is the geometric mean, not the product prod_t w_t that TRL's
``sequence_*`` modes and verl's ``rollout_is=sequence`` use (verl's ``rollout_rs=geometric``
is this statistic). Per token, E_rollout[log w_t] = -KL(pi_rollout || pi_old) < 0 whenever
the engines differ, so the product decays like exp(-n KL) with the response length: at a
per-token KL of 1e-3 a 2,000-token chain of thought weighs 0.14 and a 20-token answer 0.98, a
length penalty unrelated to the reward, and its variance grows exponentially with n. The
geometric mean is exp(-KL) at every length, so one pair of bounds means the same per token
for short and long responses (as GSPO's sequence ratio in ``rlvr.losses``). What it gives
up: it is not an unbiased sequence-level importance weight (the untruncated product is), so
its bounds are not comparable with TRL's or verl's caps.

Contract: a pure function of tensors, no ``.item()``. Positions where ``mask`` is 0 get
weight 0 and never reach any arithmetic (inf/NaN there are replaced first). A valid token
whose log-prob gap is NaN (a broken engine or forward) gets weight 0, in sequence modes its
whole response does, and is counted in ``rollout_is/nan_frac``; the log gap is clamped to
+-20 (w in [2e-9, 4.9e8]) so no weight or metric is inf.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.aggregation import token_means
from rlvr.config.engines import CORRECTION_MODES

__all__ = ["ACTIVE_MODES", "LOG_WEIGHT_BOUND", "importance_weights", "resolve_mode"]

# The modes that produce weights; "off" produces none and "auto" is resolved first (resolve_mode).
ACTIVE_MODES: tuple[str, ...] = tuple(m for m in CORRECTION_MODES if m not in ("auto", "off"))
LOG_WEIGHT_BOUND = 20.0  # |log w| is clamped to this, as verl's safety bound: exp(20) = 4.9e8


def resolve_mode(mode: str, engine: str) -> str:
    """``auto`` -> ``token_truncate`` with the vLLM engine, ``off`` with HF; any other mode is kept.

    The HF engine samples with the training forward's own code, so its recorded log-probs
    equal pi_old's to ~1e-6 in fp32 and every weight would be 1 (up to top-k/top-p, see
    ``importance_weights``); vLLM samples with different kernels and precision.
    """
    if mode not in CORRECTION_MODES:
        raise ValueError(f"Unknown rollout correction mode {mode!r}; choose one of {', '.join(CORRECTION_MODES)}.")
    if mode != "auto":
        return mode
    return "token_truncate" if engine == "vllm" else "off"


def importance_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, *, mode: str,
                       cap: float = 2.0, mask_low: float = 0.5,
                       mask_high: float = 2.0) -> tuple[Tensor, dict[str, Tensor]]:
    """The detached ``[B, T]`` weights of ``mode`` (one of ``ACTIVE_MODES``) and their metrics.

    Args:
        old_logprobs: ``[B, T]`` log pi_old of the sampled tokens (the training forward at the
            rollout weights); detached here.
        rollout_logprobs: ``[B, T]`` log-probs the engine recorded for the same tokens, of the
            distribution it sampled from. With top-k/top-p that is the filtered distribution, so
            w = pi_old / pi_filtered is the right weight for the sampled tokens (tokens the filter
            removed were never sampled and no weight can bring them back).
        mask: ``[B, T]`` 1/True on response tokens.
        cap: the ``*_truncate`` bound; mask_low, mask_high: the ``*_mask`` bounds (inclusive).

    Returns:
        weights ``[B, T]`` (0 at masked positions), and metrics as detached 0-dim tensors, token
        means each with its token count (``rlvr.aggregation.TOKEN_COUNT``), over valid tokens:

        * ``rollout_is/weight_mean``: mean applied weight w~ (what multiplies the loss terms);
        * ``rollout_is/weight_max``: the largest weight before truncation or masking (not a
          token mean; 0 without tokens);
        * ``rollout_is/capped_frac`` (truncate modes) or ``rollout_is/masked_frac`` (mask
          modes): share of tokens whose weight was capped, or dropped (weight 0);
        * ``rollout_is/kl``: k3 = w - 1 - log w per token (always token level), an estimate of
          KL(pi_rollout || pi_old) per token, >= 0;
        * ``rollout_is/nan_frac``: share of tokens dropped because their gap was NaN.
    """
    if mode not in ACTIVE_MODES:
        raise ValueError(f"importance_weights needs one of {', '.join(ACTIVE_MODES)}, got {mode!r}: resolve "
                         "'auto' with resolve_mode first, and pass no weights at all for 'off'.")
    if old_logprobs.dim() != 2 or old_logprobs.shape != rollout_logprobs.shape or old_logprobs.shape != mask.shape:
        raise ValueError("old_logprobs, rollout_logprobs and mask must all be [B, T]; got "
                         f"{tuple(old_logprobs.shape)}, {tuple(rollout_logprobs.shape)}, {tuple(mask.shape)}.")
    with torch.no_grad():
        valid = mask.bool()  # [B, T]
        zero = torch.zeros_like(old_logprobs)  # [B, T]
        # where, not multiply: padding may hold inf/NaN, and 0 * inf = NaN.
        gap = torch.where(valid, old_logprobs.detach() - rollout_logprobs.to(old_logprobs.dtype), zero)  # [B, T]
        nan = valid & gap.isnan()  # [B, T]
        token_log_w = gap.nan_to_num(nan=0.0).clamp(-LOG_WEIGHT_BOUND, LOG_WEIGHT_BOUND)  # [B, T]
        log_w = token_log_w
        if mode.startswith("sequence"):
            counted = valid & ~nan  # [B, T]
            n = valid.sum(dim=-1, keepdim=True).clamp(min=1)  # [B, 1]
            seq_log_w = torch.where(counted, token_log_w, zero).sum(dim=-1, keepdim=True) / n  # [B, 1]
            log_w = seq_log_w.expand_as(token_log_w)  # [B, T]: one weight per response
            nan = valid & nan.any(dim=-1, keepdim=True)  # [B, T]: a NaN token drops its whole response
        raw = torch.exp(log_w)  # [B, T]
        if mode.endswith("truncate"):
            weights = raw.clamp(max=cap)  # [B, T]
            hit, hit_key = raw > cap, "rollout_is/capped_frac"  # [B, T]
        else:
            keep = (raw >= mask_low) & (raw <= mask_high)  # [B, T]
            weights = torch.where(keep, raw, zero)  # [B, T]
            hit, hit_key = ~keep, "rollout_is/masked_frac"  # [B, T]
        kept = valid & ~nan  # [B, T]
        weights = torch.where(kept, weights, zero)  # [B, T]
        dtype = weights.dtype
        k3 = torch.exp(token_log_w) - 1.0 - token_log_w  # [B, T]
        metrics = token_means({
            "rollout_is/weight_mean": (weights, valid),
            hit_key: ((hit & kept).to(dtype), valid),
            "rollout_is/kl": (k3, valid & ~gap.isnan()),
            "rollout_is/nan_frac": (nan.to(dtype), valid),
        })
        raw_max = torch.where(kept, raw, torch.full_like(raw, float("-inf"))).amax()
        metrics["rollout_is/weight_max"] = torch.where(kept.any(), raw_max, torch.zeros_like(raw_max))
    return weights, metrics
