"""Policy-gradient losses for RLVR: one per-token term each, registered by name, one shared pipeline.

Every loss is called the same way::

    loss, metrics = POLICY_LOSSES[name](
        logprobs,        # [B, T] log pi_theta(o_t | ...), carries the gradient
        old_logprobs,    # [B, T] log pi_old(o_t | ...), the policy that sampled the rollouts
        advantages,      # [B] (one per sequence, broadcast over T) or [B, T]
        mask,            # [B, T] 1/True on response tokens, 0/False on prompt and padding
        aggregation=..., # how per-token terms become a scalar, see `rlvr.aggregation.aggregate`
        ...,             # the rest of SHARED_KEYWORDS, then the loss's own hyperparameters
    )

and runs ``policy_loss``: prepare the inputs (``LossInputs``), the loss's per-token term,
the reduction, the KL penalty, the shared metrics. A loss is only its term and its own
hyperparameters (``PolicyLoss.hyperparameters``, with their defaults). With
r_t = pi_theta / pi_old = exp(logprobs - old_logprobs) the registered terms are

    sapo     -f(r) A,  f(r) = sigmoid(tau (r - 1)) * 4 / tau      Gao et al. 2025, arXiv 2511.20347
    grpo     -min(r A, clip(r, 1 - eps, 1 + eps) A)               Shao et al. 2024 (DeepSeekMath)
    dapo     as grpo with decoupled eps_low < eps_high            Yu et al. 2025, arXiv 2503.14476
    dr_grpo  as grpo, summed per sequence / constant length       Liu et al. 2025, arXiv 2503.20783
    gspo     as grpo with the sequence ratio exp(mean_t log r)    Zheng et al. 2025, arXiv 2507.18071
    cispo    -sg(min(r, 1 + eps_high)) A log pi_theta             MiniMax 2025, arXiv 2506.13585
    sft      -A log pi_theta: with A = 1, the negative log-likelihood (supervised cold start, rlvr.sft)

Shared contract:

* Positions where ``mask`` is 0 never influence the loss, its gradient, or the metrics, even if
  they hold inf/NaN (they are replaced before any arithmetic, not multiplied by 0).
* ``aggregation`` is honoured by every loss; each loss only changes its *default*.
* Optional KL penalty to a reference policy with Schulman's k3 estimator,
  ``k3 = exp(ref - logp) - (ref - logp) - 1`` (>= 0, unbiased for KL(pi_theta || pi_ref)),
  aggregated with the same mode and added as ``kl_coef * aggregate(k3)``.
* Optional entropy bonus, ``- entropy_coef * aggregate(H_t)`` with H_t the entropy of the full
  next-token distribution at each response token (``entropy``, given without a gradient). Its
  gradient is the score-function estimate from the sampled tokens, with the exact H_t as the
  baseline: ``grad H_t = -E_{o ~ pi}[(log pi(o) + H_t) grad log pi(o)]`` (on-policy: exact in
  expectation when the samples come from pi_theta, as with one minibatch per rollout batch).
* Optional importance weights ``is_weights`` ``[B, T]`` (``rlvr.correction``: the rollout
  engine's mismatch with the old policy): the loss's per-token term is multiplied by the
  detached weight before the reduction, ``aggregate(w_t * term_t)``, for every loss. A token
  of weight 0 adds nothing but still counts in the divisor (the reduction's counts are fixed
  before any forward, so micro-batching stays exact, and a zero weight means "this sample
  says nothing", not "this sample was never drawn"). The entropy bonus and the KL penalty are
  not weighted: they are regularisers of pi_theta evaluated at the sampled tokens, not
  estimates of the policy gradient under pi_old.
* Metrics are detached 0-dim tensors; nothing here calls ``.item()`` or otherwise syncs the
  device. Token means come with their token counts (``rlvr.aggregation.TOKEN_COUNT``); an
  empty selection (e.g. no positive-advantage token) reports 0 with count 0, never NaN.
* A keyword that is neither shared nor the loss's own is a ``TypeError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from rlvr.aggregation import AGGREGATION_MODES, TOKEN_COUNT, aggregate, token_means

__all__ = [
    "AGGREGATION_MODES",
    "POLICY_LOSSES",
    "SHARED_KEYWORDS",
    "TOKEN_COUNT",
    "LossInputs",
    "PolicyLoss",
    "aggregate",
    "cispo",
    "dapo",
    "default_aggregation",
    "dr_grpo",
    "grpo",
    "gspo",
    "loss_hyperparameters",
    "policy_loss",
    "sapo",
    "sft",
]

# Keyword arguments every loss accepts; they belong to the call site, not to one algorithm.
SHARED_KEYWORDS: frozenset[str] = frozenset(
    {"aggregation", "norm_len", "global_tokens", "global_seqs", "ref_logprobs", "kl_coef", "entropy",
     "entropy_coef", "is_weights"}
)


@dataclass(frozen=True)
class LossInputs:
    """One micro-batch as every loss term sees it; padding holds log-prob 0, log-ratio 0, advantage 0."""

    logprobs: Tensor  # [B, T] log pi_theta, carries the gradient
    log_ratio: Tensor  # [B, T] logprobs - sg(old_logprobs)
    advantages: Tensor  # [B, T] detached
    valid: Tensor  # [B, T] bool

    @classmethod
    def prepare(cls, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> "LossInputs":
        """Check shapes, broadcast advantages to ``[B, T]`` and neutralise invalid positions."""
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
        return cls(logprobs, log_ratio, advantages, valid)


# A term returns the per-token loss [B, T], the ratio its metrics describe [B, T], and its own metrics.
Term = Callable[..., tuple[Tensor, Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class PolicyLoss:
    """A registered loss: its per-token term, its hyperparameters with defaults, its default aggregation."""

    name: str
    term: Term
    hyperparameters: dict[str, float] = field(default_factory=dict)
    aggregation: str = "seq-mean-token-mean"

    def __call__(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
                 aggregation: str | None = None, norm_len: float | None = None,
                 global_tokens: float | Tensor | None = None, global_seqs: float | Tensor | None = None,
                 ref_logprobs: Tensor | None = None, kl_coef: float = 0.0, entropy: Tensor | None = None,
                 entropy_coef: float = 0.0, is_weights: Tensor | None = None,
                 **hyperparameters: float) -> tuple[Tensor, dict[str, Tensor]]:
        foreign = sorted(set(hyperparameters) - set(self.hyperparameters))
        if foreign:
            raise TypeError(f"{self.name}() got unexpected keyword arguments {foreign}; its hyperparameters are "
                            f"{sorted(self.hyperparameters)}")
        inputs = LossInputs.prepare(logprobs, old_logprobs, advantages, mask)
        return policy_loss(self, inputs, {**self.hyperparameters, **hyperparameters},
                           aggregation=aggregation or self.aggregation, norm_len=norm_len,
                           global_tokens=global_tokens, global_seqs=global_seqs,
                           ref_logprobs=ref_logprobs, kl_coef=kl_coef, entropy=entropy, entropy_coef=entropy_coef,
                           is_weights=is_weights)


def policy_loss(loss: PolicyLoss, inputs: LossInputs, hyperparameters: dict[str, float], *, aggregation: str,
                norm_len: float | None, global_tokens: float | Tensor | None, global_seqs: float | Tensor | None,
                ref_logprobs: Tensor | None, kl_coef: float, entropy: Tensor | None,
                entropy_coef: float = 0.0, is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Term (x importance weight, + entropy bonus) -> reduction -> KL penalty -> shared metrics
    (``ratio/mean``, ``ratio/max``, ``entropy``, ``kl``)."""
    if entropy_coef < 0:
        raise ValueError(f"entropy_coef must be >= 0, got {entropy_coef}.")
    if entropy_coef > 0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy (the [B, T] entropies at the response tokens).")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}.")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError(
            f"kl_coef={kl_coef} needs ref_logprobs (the reference policy's [B, T] log-probs); "
            "pass them or set kl_coef=0."
        )
    per_token, ratio, metrics = loss.term(inputs, **hyperparameters)  # [B, T], [B, T]
    valid, logprobs = inputs.valid, inputs.logprobs
    if is_weights is not None:
        if is_weights.shape != logprobs.shape:
            raise ValueError(f"is_weights must be [B, T] = {tuple(logprobs.shape)}; got {tuple(is_weights.shape)}.")
        weights = torch.where(valid, is_weights.detach().to(logprobs.dtype), torch.zeros_like(logprobs))  # [B, T]
        per_token = per_token * weights  # [B, T]: the term only, not the bonus or the KL below
    if entropy_coef > 0:
        ent = torch.where(valid, entropy.detach(), torch.zeros_like(logprobs))  # [B, T]
        sampled = logprobs.detach()  # [B, T]
        # value -coef * H_t; gradient coef * (log pi + H_t) grad log pi, in expectation -coef * grad H_t
        per_token = per_token - entropy_coef * ent + entropy_coef * (sampled + ent) * (logprobs - sampled)  # [B, T]
    agg = dict(mode=aggregation, norm_len=norm_len, global_tokens=global_tokens, global_seqs=global_seqs)
    total = aggregate(per_token, valid, **agg)

    if ref_logprobs is not None:
        # k3 = exp(ref - logp) - (ref - logp) - 1 >= 0; gradient flows through logp only.
        delta = torch.where(valid, ref_logprobs.detach() - logprobs, torch.zeros_like(logprobs))  # [B, T]
        kl = aggregate(torch.exp(delta) - delta - 1.0, valid, **agg)
        if kl_coef > 0:
            total = total + kl_coef * kl
        metrics["kl"] = kl.detach()

    with torch.no_grad():
        ratio = ratio.detach()  # [B, T]
        shared = {"ratio/mean": (ratio, valid)}
        if entropy is not None:
            shared["entropy"] = (entropy.detach(), valid)
        metrics.update(token_means(shared))
        ratio_max = torch.where(valid, ratio, torch.full_like(ratio, float("-inf"))).amax()
        metrics["ratio/max"] = torch.where(valid.any(), ratio_max, torch.zeros_like(ratio_max))
    return total, metrics


# --------------------------------------------------------------------------------------------
# Terms
# --------------------------------------------------------------------------------------------


def sapo_term(x: LossInputs, *, tau_pos: float, tau_neg: float, log_ratio_clamp: float):
    """Soft Adaptive Policy Optimization (Gao et al. 2025, arXiv 2511.20347).

    Replaces the hard clip with a smooth gate on the token ratio::

        r    = exp(clamp(logp - old_logp, -log_ratio_clamp, log_ratio_clamp))
        f(r) = sigmoid(tau (r - 1)) * 4 / tau,    tau = tau_pos if A > 0 else tau_neg
        loss = aggregate(-f(r) A)

    d f / d logp = f'(r) r with gate weight f'(r) = 4 s (1 - s), s = sigmoid(tau (r - 1)):
    1 at r = 1 (plain policy gradient on-policy), decaying smoothly as r leaves 1. A larger
    tau decays faster, so tau_neg > tau_pos damps negative-advantage updates more.

    Args:
        tau_pos, tau_neg: gate temperatures for A > 0 and A <= 0 (A = 0 tokens have no gradient either way).
        log_ratio_clamp: bound on |logp - old_logp| so exp never overflows.

    Metrics: ``sapo/gate_pos`` and ``sapo/gate_neg`` (mean gate weight over valid tokens with
    A > 0 and A < 0), ``sapo/gate_below_half`` (share of valid tokens with weight < 0.5),
    plus the shared ``ratio/mean``, ``ratio/max``, ``entropy``, ``kl``.
    """
    ratio = torch.exp(x.log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp))  # [B, T]
    positive = x.advantages > 0  # [B, T]
    # Built in the ratio's dtype: a float32 constant cast up would make tau_neg 1.0499999523 in fp64.
    tau = torch.full_like(ratio, tau_neg).masked_fill(positive, tau_pos)  # [B, T]
    gate = torch.sigmoid(tau * (ratio - 1.0))  # [B, T]
    per_token = -gate * (4.0 / tau) * x.advantages  # [B, T]
    with torch.no_grad():
        weight = 4.0 * gate * (1.0 - gate)  # [B, T] f'(r)
        # A = 0 tokens carry no gradient, so they belong to neither gate metric.
        metrics = token_means({"sapo/gate_pos": (weight, x.valid & positive),
                               "sapo/gate_neg": (weight, x.valid & (x.advantages < 0)),
                               "sapo/gate_below_half": ((weight < 0.5).to(weight.dtype), x.valid)})
    return per_token, ratio, metrics


def _clipped(ratio: Tensor, x: LossInputs, clip_low: float, clip_high: float):
    """PPO surrogate ``-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)`` and its ``clip_frac`` metric.

    A token counts as clipped when the clipped term is strictly the smaller one, which is
    exactly when (A > 0 and r > 1 + clip_high) or (A < 0 and r < 1 - clip_low); those
    tokens get zero gradient.
    """
    a = x.advantages
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    per_token = -torch.minimum(ratio * a, clipped_ratio * a)  # [B, T]
    with torch.no_grad():
        is_clipped = ((a > 0) & (ratio > 1.0 + clip_high)) | ((a < 0) & (ratio < 1.0 - clip_low))  # [B, T]
        metrics = token_means({"clip_frac": (is_clipped.to(ratio.dtype), x.valid)})
    return per_token, ratio, metrics


def clipped_term(x: LossInputs, *, clip_low: float, clip_high: float):
    """grpo, dapo and dr_grpo: PPO's clipped surrogate on the token ratio r = exp(logp - old_logp).

    GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300):
    ``loss = aggregate(-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A))``, averaged per
    sequence then over sequences by default, as in the paper.

    DAPO (Yu et al. 2025, arXiv 2503.14476): "clip-higher", a wider upper bound (0.28 vs 0.2)
    so low-probability tokens can grow, and token-level averaging by default so long
    sequences are not down-weighted.

    Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783): the
    GRPO surrogate without the per-sequence 1/|o_i| length normaliser,
    ``(1/B) sum_i (1/norm_len) sum_t -min(r A, clip(r) A)`` with a constant ``norm_len``
    (default T, the mask's width; the trainer passes the generation budget). The paper's
    other change, advantages not divided by the group std, lives in the advantage estimator.

    Metrics: ``clip_frac`` (share of valid tokens whose clipped term is active; they get no
    gradient) plus the shared ones.
    """
    return _clipped(torch.exp(x.log_ratio), x, clip_low, clip_high)


def gspo_term(x: LossInputs, *, clip_low: float, clip_high: float):
    """GSPO (Zheng et al. 2025, Group Sequence Policy Optimization, arXiv 2507.18071).

    Clips one length-normalised ratio per sequence instead of one per token::

        s_i    = exp((1/n_i) sum_t (logp_it - old_logp_it))        # over valid tokens
        s_it   = sg(s_i) * exp(logp_it - sg(logp_it))               # value s_i, d/dlogp_it = s_i
        loss   = aggregate(-min(s_it A_it, clip(s_it, 1 - clip_low, 1 + clip_high) A_it))

    This is the paper's GSPO-token form: with a per-sequence advantage and the default
    ``seq-mean-token-mean`` its gradient equals sequence-level GSPO, and every token of a
    sequence gets the same gradient scale (all are clipped or none). The clip range is
    tiny because s_i is a geometric mean over tokens.

    Metrics: ``clip_frac`` (share of valid tokens in clipped sequences), shared ones with
    ``ratio/*`` describing s_it.
    """
    seq_len = x.valid.sum(dim=-1, keepdim=True).clamp(min=1)  # [B, 1]
    seq_ratio = torch.exp(x.log_ratio.sum(dim=-1, keepdim=True) / seq_len)  # [B, 1]
    ratio = seq_ratio.detach() * torch.exp(x.logprobs - x.logprobs.detach())  # [B, T]: value s_i, d/dlogp = s_i
    return _clipped(ratio, x, clip_low, clip_high)


def cispo_term(x: LossInputs, *, clip_high: float):
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
        clip_high: the weight is truncated at ``1 + clip_high``.

    Metrics: ``clip_frac`` (share of valid tokens whose weight was truncated) plus the shared ones.
    """
    ratio = torch.exp(x.log_ratio)  # [B, T]
    weight = ratio.detach().clamp(max=1.0 + clip_high)  # [B, T]
    per_token = -weight * x.advantages * x.logprobs  # [B, T]
    with torch.no_grad():
        metrics = token_means({"clip_frac": ((ratio > 1.0 + clip_high).to(ratio.dtype), x.valid)})
    return per_token, ratio, metrics


def sft_term(x: LossInputs):
    """Supervised fine-tuning: the negative log-likelihood of the masked (assistant) tokens.

    ``loss = aggregate(-A log pi_theta)``; the SFT trainer (``rlvr.sft``) passes A = 1 for every
    sequence, so the loss is the NLL, by default a token mean over the minibatch (with the
    trainer's ``global_tokens``: exact under micro-batching and data parallelism). A stays a
    factor, as in every other term, so a sequence of A = 0 contributes nothing (and a per-sequence
    A weights a trajectory). ``old_logprobs`` play no part; the ratio reported is exp(logp - old).

    Metrics: ``sft/nll`` (token mean of -log pi_theta over the masked tokens, whatever A) plus the shared ones.
    """
    per_token = -x.advantages * x.logprobs  # [B, T]
    with torch.no_grad():
        metrics = token_means({"sft/nll": (-x.logprobs, x.valid)})
    return per_token, torch.exp(x.log_ratio), metrics


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

sapo = PolicyLoss("sapo", sapo_term, {"tau_pos": 1.0, "tau_neg": 1.05, "log_ratio_clamp": 20.0},
                  "seq-mean-token-mean")
grpo = PolicyLoss("grpo", clipped_term, {"clip_low": 0.2, "clip_high": 0.2}, "seq-mean-token-mean")
dapo = PolicyLoss("dapo", clipped_term, {"clip_low": 0.2, "clip_high": 0.28}, "token-mean")
dr_grpo = PolicyLoss("dr_grpo", clipped_term, {"clip_low": 0.2, "clip_high": 0.2}, "seq-mean-token-sum-norm")
gspo = PolicyLoss("gspo", gspo_term, {"clip_low": 3e-4, "clip_high": 4e-4}, "seq-mean-token-mean")
cispo = PolicyLoss("cispo", cispo_term, {"clip_high": 5.0}, "token-mean")
sft = PolicyLoss("sft", sft_term, {}, "token-mean")

POLICY_LOSSES: dict[str, PolicyLoss] = {loss.name: loss for loss in (sapo, grpo, dapo, dr_grpo, gspo, cispo, sft)}


def _lookup(name: str) -> PolicyLoss:
    if name not in POLICY_LOSSES:
        raise ValueError(f"Unknown policy loss {name!r}; registered losses are {sorted(POLICY_LOSSES)}.")
    return POLICY_LOSSES[name]


def loss_hyperparameters(name: str) -> set[str]:
    """The loss's own keyword arguments (not `SHARED_KEYWORDS`): a trainer passes only these of its settings."""
    return set(_lookup(name).hyperparameters)


def default_aggregation(name: str) -> str:
    """The aggregation mode ``POLICY_LOSSES[name]`` uses when none is passed."""
    return _lookup(name).aggregation
