"""Policy-gradient losses for RLVR, registered by name, and the one token/sequence reduction.

Every loss is a pure function of tensors and explicit keyword hyperparameters::

    loss, metrics = POLICY_LOSSES[name](
        logprobs,        # [B, T] log pi_theta(o_t | ...), carries the gradient
        old_logprobs,    # [B, T] log pi_old(o_t | ...), the policy that sampled the rollouts
        advantages,      # [B] (one per sequence, broadcast over T) or [B, T]
        mask,            # [B, T] 1/True on response tokens, 0/False on prompt and padding
        aggregation=..., # how per-token terms become a scalar, see `aggregate`
        ...)

With r_t = pi_theta / pi_old = exp(logprobs - old_logprobs) the registered losses are

    sapo     -f(r) A,  f(r) = sigmoid(tau (r - 1)) * 4 / tau      Gao et al. 2025, arXiv 2511.20347
    grpo     -min(r A, clip(r, 1 - eps, 1 + eps) A)               Shao et al. 2024 (DeepSeekMath)
    dapo     as grpo with decoupled eps_low < eps_high            Yu et al. 2025, arXiv 2503.14476
    dr_grpo  as grpo, summed per sequence / constant length       Liu et al. 2025, arXiv 2503.20783
    gspo     as grpo with the sequence ratio exp(mean_t log r)    Zheng et al. 2025, arXiv 2507.18071
    cispo    -sg(min(r, 1 + eps_high)) A log pi_theta             MiniMax 2025, arXiv 2506.13585

Shared contract:

* Positions where ``mask`` is 0 never influence the loss, its gradient, or the metrics, even if
  they hold inf/NaN (they are replaced before any arithmetic, not multiplied by 0).
* ``aggregation`` is honoured by every loss; each loss only changes its *default*.
* Optional KL penalty to a reference policy with Schulman's k3 estimator,
  ``k3 = exp(ref - logp) - (ref - logp) - 1`` (>= 0, unbiased for KL(pi_theta || pi_ref)),
  aggregated with the same mode and added as ``kl_coef * aggregate(k3)``.
* Metrics are detached 0-dim tensors; nothing here calls ``.item()`` or otherwise syncs the
  device. Empty selections (e.g. no positive-advantage token) report 0, never NaN.
* Each loss declares exactly its own hyperparameters; an unknown keyword is a ``TypeError``.
  `loss_hyperparameters(name)` lists them so a trainer can pass only what a loss declares.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "AGGREGATION_MODES",
    "POLICY_LOSSES",
    "SHARED_KEYWORDS",
    "aggregate",
    "cispo",
    "dapo",
    "default_aggregation",
    "dr_grpo",
    "grpo",
    "gspo",
    "loss_hyperparameters",
    "sapo",
]

AGGREGATION_MODES: tuple[str, ...] = (
    "seq-mean-token-mean",
    "token-mean",
    "seq-mean-token-sum-norm",
)

# Keyword arguments every loss accepts; they belong to the call site, not to one algorithm.
SHARED_KEYWORDS: frozenset[str] = frozenset(
    {"aggregation", "norm_len", "global_tokens", "global_seqs", "ref_logprobs", "kl_coef", "entropy"}
)


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
# Shared pieces
# --------------------------------------------------------------------------------------------


def _prepare(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Check shapes, broadcast advantages to ``[B, T]`` and zero out invalid positions.

    Returns ``(logprobs, log_ratio, advantages, valid)`` where padding holds logprob 0,
    log-ratio 0 (ratio 1) and advantage 0, so no inf/NaN from padding reaches autograd.
    """
    if logprobs.dim() != 2 or logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            "logprobs, old_logprobs and mask must all be [B, T]; got "
            f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(mask.shape)}."
        )
    if advantages.dim() == 1 and advantages.shape[0] == logprobs.shape[0]:
        advantages = advantages[:, None].expand_as(logprobs)  # [B] -> [B, T]
    elif advantages.shape != logprobs.shape:
        raise ValueError(
            f"advantages must be [B] or [B, T] = {tuple(logprobs.shape)}; got {tuple(advantages.shape)}."
        )
    valid = mask.bool()  # [B, T]
    zero = torch.zeros_like(logprobs)  # [B, T]
    logprobs = torch.where(valid, logprobs, zero)  # [B, T]
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), zero)  # [B, T]
    advantages = torch.where(valid, advantages.detach().to(logprobs.dtype), zero)  # [B, T]
    return logprobs, log_ratio, advantages, valid


# A token-mean metric ``key`` comes with ``key + TOKEN_COUNT`` (its number of tokens), so the
# update can combine micro-batches and ranks into the exact token-weighted value of the step
# (``rlvr.step_metrics``) and leave out a metric that had no tokens at all.
TOKEN_COUNT = "#tokens"


def _masked_mean(values: Tensor, selected: Tensor) -> Tensor:
    """Mean of ``values`` over ``selected`` (bool, same shape); 0 when nothing is selected."""
    values = torch.where(selected, values, torch.zeros_like(values))
    return values.sum() / selected.sum().clamp(min=1)


def _token_means(metrics: dict[str, Tensor], **means: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    """Add each ``name=(values, selected)`` as its masked mean and its token count; returns ``metrics``."""
    for key, (values, selected) in means.items():
        key = key.replace("__", "/")
        metrics[key] = _masked_mean(values, selected)
        metrics[key + TOKEN_COUNT] = selected.sum()
    return metrics


def _finish(
    per_token: Tensor,
    ratio: Tensor,
    logprobs: Tensor,
    valid: Tensor,
    metrics: dict[str, Tensor],
    *,
    aggregation: str,
    norm_len: float | None,
    global_tokens: float | Tensor | None,
    global_seqs: float | Tensor | None,
    ref_logprobs: Tensor | None,
    kl_coef: float,
    entropy: Tensor | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Aggregate, add the KL penalty, and attach the shared metrics."""
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}.")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError(
            f"kl_coef={kl_coef} needs ref_logprobs (the reference policy's [B, T] log-probs); "
            "pass them or set kl_coef=0."
        )
    agg = dict(mode=aggregation, norm_len=norm_len, global_tokens=global_tokens, global_seqs=global_seqs)
    loss = aggregate(per_token, valid, **agg)

    if ref_logprobs is not None:
        # k3 = exp(ref - logp) - (ref - logp) - 1 >= 0; gradient flows through logp only.
        delta = torch.where(valid, ref_logprobs.detach() - logprobs, torch.zeros_like(logprobs))  # [B, T]
        kl = aggregate(torch.exp(delta) - delta - 1.0, valid, **agg)
        if kl_coef > 0:
            loss = loss + kl_coef * kl
        metrics["kl"] = kl.detach()

    with torch.no_grad():
        ratio = ratio.detach()  # [B, T]
        _token_means(metrics, ratio__mean=(ratio, valid))
        ratio_max = torch.where(valid, ratio, torch.full_like(ratio, float("-inf"))).amax()
        metrics["ratio/max"] = torch.where(valid.any(), ratio_max, torch.zeros_like(ratio_max))
        if entropy is not None:
            _token_means(metrics, entropy=(entropy.detach(), valid))
    return loss, metrics


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, valid: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO surrogate ``-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)`` and its ``clip_frac`` metric.

    A token counts as clipped when the clipped term is strictly the smaller one, which is
    exactly when (A > 0 and r > 1 + clip_high) or (A < 0 and r < 1 - clip_low); those
    tokens get zero gradient.
    """
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    per_token = -torch.minimum(ratio * advantages, clipped_ratio * advantages)  # [B, T]
    with torch.no_grad():
        is_clipped = ((advantages > 0) & (ratio > 1.0 + clip_high)) | (
            (advantages < 0) & (ratio < 1.0 - clip_low)
        )  # [B, T]
        metrics = _token_means({}, clip_frac=(is_clipped.to(ratio.dtype), valid))
    return per_token, metrics


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def sapo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    aggregation: str = "seq-mean-token-mean",
    norm_len: float | None = None,
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: Tensor | None = None,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    log_ratio_clamp: float = 20.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Soft Adaptive Policy Optimization (Gao et al. 2025, arXiv 2511.20347).

    Replaces the hard clip with a smooth gate on the token ratio::

        r    = exp(clamp(logp - old_logp, -log_ratio_clamp, log_ratio_clamp))
        f(r) = sigmoid(tau (r - 1)) * 4 / tau,    tau = tau_pos if A > 0 else tau_neg
        loss = aggregate(-f(r) A)

    d f / d logp = f'(r) r with gate weight f'(r) = 4 s (1 - s), s = sigmoid(tau (r - 1)):
    1 at r = 1 (plain policy gradient on-policy), decaying smoothly as r leaves 1. A larger
    tau decays faster, so tau_neg > tau_pos damps negative-advantage updates more.

    Args:
        logprobs, old_logprobs, mask: ``[B, T]``; advantages: ``[B]`` or ``[B, T]``.
        tau_pos, tau_neg: gate temperatures for A > 0 and A <= 0.
        log_ratio_clamp: bound on |logp - old_logp| so exp never overflows.

    Metrics: ``sapo/gate_pos`` and ``sapo/gate_neg`` (mean gate weight over valid tokens with
    A > 0 and A < 0), ``sapo/gate_below_half`` (share of valid tokens with weight < 0.5),
    plus the shared ``ratio/mean``, ``ratio/max``, ``entropy``, ``kl``.
    """
    logprobs, log_ratio, advantages, valid = _prepare(logprobs, old_logprobs, advantages, mask)
    ratio = torch.exp(log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp))  # [B, T]
    positive = advantages > 0  # [B, T]
    # Built in the ratio's dtype: a float32 constant cast up would make tau_neg 1.0499999523 in fp64.
    tau = torch.full_like(ratio, tau_neg).masked_fill(positive, tau_pos)  # [B, T]
    gate = torch.sigmoid(tau * (ratio - 1.0))  # [B, T]
    per_token = -gate * (4.0 / tau) * advantages  # [B, T]

    with torch.no_grad():
        weight = 4.0 * gate * (1.0 - gate)  # [B, T] f'(r)
        # A = 0 tokens carry no gradient, so they belong to neither gate metric.
        metrics = _token_means({}, sapo__gate_pos=(weight, valid & positive),
                               sapo__gate_neg=(weight, valid & (advantages < 0)),
                               sapo__gate_below_half=((weight < 0.5).to(weight.dtype), valid))
    return _finish(
        per_token, ratio, logprobs, valid, metrics,
        aggregation=aggregation, norm_len=norm_len, global_tokens=global_tokens,
        global_seqs=global_seqs, ref_logprobs=ref_logprobs, kl_coef=kl_coef, entropy=entropy,
    )  # fmt: skip


def _ppo_family(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
    clip_low: float, clip_high: float, shared: dict,
) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """Shared body of grpo, dapo and dr_grpo: token ratio, clipped surrogate, aggregation."""
    logprobs, log_ratio, advantages, valid = _prepare(logprobs, old_logprobs, advantages, mask)
    ratio = torch.exp(log_ratio)  # [B, T]
    per_token, metrics = _clipped_surrogate(ratio, advantages, valid, clip_low, clip_high)
    return _finish(per_token, ratio, logprobs, valid, metrics, **shared)


def grpo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    aggregation: str = "seq-mean-token-mean",
    norm_len: float | None = None,
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300): PPO's clipped surrogate.

    ``loss = aggregate(-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A))``, r = exp(logp - old_logp),
    averaged per sequence then over sequences by default, as in the paper.

    Args:
        logprobs, old_logprobs, mask: ``[B, T]``; advantages: ``[B]`` or ``[B, T]``.

    Metrics: ``clip_frac`` (share of valid tokens whose clipped term is active; they get no
    gradient) plus the shared ones.
    """
    shared = dict(aggregation=aggregation, norm_len=norm_len, global_tokens=global_tokens,
                  global_seqs=global_seqs, ref_logprobs=ref_logprobs, kl_coef=kl_coef, entropy=entropy)  # fmt: skip
    return _ppo_family(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, shared)


def dapo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    aggregation: str = "token-mean",
    norm_len: float | None = None,
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DAPO (Yu et al. 2025, arXiv 2503.14476): clipped surrogate with "clip-higher".

    ``loss = aggregate(-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A))`` with a wider upper
    bound (0.28 vs 0.2) so low-probability tokens can grow, and token-level averaging by
    default so long sequences are not down-weighted.

    Args:
        logprobs, old_logprobs, mask: ``[B, T]``; advantages: ``[B]`` or ``[B, T]``.

    Metrics: ``clip_frac`` plus the shared ones.
    """
    shared = dict(aggregation=aggregation, norm_len=norm_len, global_tokens=global_tokens,
                  global_seqs=global_seqs, ref_logprobs=ref_logprobs, kl_coef=kl_coef, entropy=entropy)  # fmt: skip
    return _ppo_family(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, shared)


def dr_grpo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    aggregation: str = "seq-mean-token-sum-norm",
    norm_len: float | None = None,
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783).

    The GRPO surrogate without the per-sequence 1/|o_i| length normaliser:
    ``loss = (1/B) sum_i (1/norm_len) sum_t -min(r A, clip(r) A)`` with a constant
    ``norm_len`` (default T, the mask's width). The paper's other change, advantages not
    divided by the group std, lives in the advantage estimator, not here.

    Args:
        logprobs, old_logprobs, mask: ``[B, T]``; advantages: ``[B]`` or ``[B, T]``.
        norm_len: the constant divisor (e.g. the generation budget); None means T.

    Metrics: ``clip_frac`` plus the shared ones.
    """
    shared = dict(aggregation=aggregation, norm_len=norm_len, global_tokens=global_tokens,
                  global_seqs=global_seqs, ref_logprobs=ref_logprobs, kl_coef=kl_coef, entropy=entropy)  # fmt: skip
    return _ppo_family(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, shared)


def gspo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    aggregation: str = "seq-mean-token-mean",
    norm_len: float | None = None,
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: Tensor | None = None,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025, Group Sequence Policy Optimization, arXiv 2507.18071).

    Clips one length-normalised ratio per sequence instead of one per token::

        s_i    = exp((1/n_i) sum_t (logp_it - old_logp_it))        # over valid tokens
        s_it   = sg(s_i) * exp(logp_it - sg(logp_it))               # value s_i, d/dlogp_it = s_i
        loss   = aggregate(-min(s_it A_it, clip(s_it, 1 - clip_low, 1 + clip_high) A_it))

    This is the paper's GSPO-token form: with a per-sequence advantage and the default
    ``seq-mean-token-mean`` its gradient equals sequence-level GSPO, and every token of a
    sequence gets the same gradient scale (all are clipped or none). The clip range is
    tiny because s_i is a geometric mean over tokens.

    Args:
        logprobs, old_logprobs, mask: ``[B, T]``; advantages: ``[B]`` or ``[B, T]``.

    Metrics: ``clip_frac`` (share of valid tokens in clipped sequences), shared ones with
    ``ratio/*`` describing s_it.
    """
    logprobs, log_ratio, advantages, valid = _prepare(logprobs, old_logprobs, advantages, mask)
    seq_len = valid.sum(dim=-1, keepdim=True).clamp(min=1)  # [B, 1]
    seq_ratio = torch.exp(log_ratio.sum(dim=-1, keepdim=True) / seq_len)  # [B, 1]
    ratio = seq_ratio.detach() * torch.exp(logprobs - logprobs.detach())  # [B, T]
    per_token, metrics = _clipped_surrogate(ratio, advantages, valid, clip_low, clip_high)
    return _finish(
        per_token, ratio, logprobs, valid, metrics,
        aggregation=aggregation, norm_len=norm_len, global_tokens=global_tokens,
        global_seqs=global_seqs, ref_logprobs=ref_logprobs, kl_coef=kl_coef, entropy=entropy,
    )  # fmt: skip


def cispo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    aggregation: str = "token-mean",
    norm_len: float | None = None,
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: Tensor | None = None,
    clip_high: float = 5.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance weight, not the update.

    ``loss = aggregate(-sg(min(r, 1 + clip_high)) A logp)``: a REINFORCE term whose detached
    weight is truncated, so every token keeps a gradient (PPO clipping zeroes it). The paper
    writes clip(r, 1 - eps_low, 1 + eps_high) but sets eps_low large enough to never bind and
    tunes only eps_high, so there is no lower bound here. The paper gives no value for
    eps_high; 5.0 (weights capped at 6) is our default, a loose cap that only catches
    outliers. Token-level averaging (1 / sum_i |o_i|) by default, as in the paper.

    The returned loss value is a surrogate for its gradient (it scales with logp), not an
    estimate of the objective; compare runs by reward, not by this number.

    Args:
        logprobs, old_logprobs, mask: ``[B, T]``; advantages: ``[B]`` or ``[B, T]``.
        clip_high: the weight is truncated at ``1 + clip_high``.

    Metrics: ``clip_frac`` (share of valid tokens whose weight was truncated) plus the shared ones.
    """
    logprobs, log_ratio, advantages, valid = _prepare(logprobs, old_logprobs, advantages, mask)
    ratio = torch.exp(log_ratio)  # [B, T]
    weight = ratio.detach().clamp(max=1.0 + clip_high)  # [B, T]
    per_token = -weight * advantages * logprobs  # [B, T]
    with torch.no_grad():
        metrics = _token_means({}, clip_frac=((ratio > 1.0 + clip_high).to(ratio.dtype), valid))
    return _finish(
        per_token, ratio, logprobs, valid, metrics,
        aggregation=aggregation, norm_len=norm_len, global_tokens=global_tokens,
        global_seqs=global_seqs, ref_logprobs=ref_logprobs, kl_coef=kl_coef, entropy=entropy,
    )  # fmt: skip


PolicyLoss = Callable[..., tuple[Tensor, dict[str, Tensor]]]

POLICY_LOSSES: dict[str, PolicyLoss] = {
    "sapo": sapo,
    "grpo": grpo,
    "dapo": dapo,
    "dr_grpo": dr_grpo,
    "gspo": gspo,
    "cispo": cispo,
}


def _lookup(name: str) -> PolicyLoss:
    if name not in POLICY_LOSSES:
        raise ValueError(f"Unknown policy loss {name!r}; registered losses are {sorted(POLICY_LOSSES)}.")
    return POLICY_LOSSES[name]


def loss_hyperparameters(name: str) -> set[str]:
    """The loss-specific keyword arguments of ``POLICY_LOSSES[name]`` (not `SHARED_KEYWORDS`).

    A trainer passes the shared keywords to every loss and, of the algorithm settings,
    only these, so e.g. ``tau_pos`` never reaches ``grpo`` (which would raise TypeError).
    """
    params = inspect.signature(_lookup(name)).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY} - SHARED_KEYWORDS


def default_aggregation(name: str) -> str:
    """The aggregation mode ``POLICY_LOSSES[name]`` uses when none is passed."""
    return inspect.signature(_lookup(name)).parameters["aggregation"].default
