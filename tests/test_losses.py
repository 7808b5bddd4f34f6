"""Hand-computed checks for rlvr.losses: every number asserted here is worked out in a comment."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from rlvr.losses import (
    AGGREGATION_MODES,
    POLICY_LOSSES,
    SHARED_KEYWORDS,
    aggregate,
    cispo,
    dapo,
    default_aggregation,
    dr_grpo,
    grpo,
    gspo,
    loss_hyperparameters,
    sapo,
    sft,
)

F64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def close(actual: torch.Tensor, expected: float, tol: float = 1e-6) -> None:
    assert actual.dim() == 0
    assert abs(actual.item() - expected) < tol, f"{actual.item()} != {expected}"


# --------------------------------------------------------------------------------------------
# aggregate
# --------------------------------------------------------------------------------------------

# x = [[1, 2, 3],      mask = [[1, 1, 0],     n = [2, 1], B = 2, T = 3
#      [4, 5, 6]]              [1, 0, 0]]
X = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
M = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_aggregate_modes_by_hand():
    x, m = t(X), t(M)
    # token-mean: (1 + 2 + 4) / 3 = 7/3
    close(aggregate(x, m, "token-mean"), 7 / 3)
    # seq-mean-token-mean: ((1 + 2)/2 + 4/1) / 2 = (1.5 + 4) / 2 = 2.75
    close(aggregate(x, m, "seq-mean-token-mean"), 2.75)
    # seq-mean-token-sum-norm, norm_len = T = 3: ((1 + 2)/3 + 4/3) / 2 = 7/6
    close(aggregate(x, m, "seq-mean-token-sum-norm"), 7 / 6)
    # norm_len = 2: (3/2 + 4/2) / 2 = 1.75
    close(aggregate(x, m, "seq-mean-token-sum-norm", norm_len=2), 1.75)
    # default mode is seq-mean-token-mean; bool masks work the same
    close(aggregate(x, m.bool()), 2.75)


def test_aggregate_empty_row_contributes_zero_and_counts_in_b():
    # third row [7, 8, 9] with mask [0, 0, 0]: n = [2, 1, 0], B = 3
    x = t(X + [[7.0, 8.0, 9.0]])
    m = t(M + [[0.0, 0.0, 0.0]])
    # token-mean unchanged: (1 + 2 + 4) / 3 = 7/3
    close(aggregate(x, m, "token-mean"), 7 / 3)
    # seq-mean-token-mean: (1.5 + 4 + 0/max(0, 1)) / 3 = 5.5/3 = 11/6
    close(aggregate(x, m, "seq-mean-token-mean"), 11 / 6)
    # seq-mean-token-sum-norm: (3/3 + 4/3 + 0) / 3 = 7/9
    close(aggregate(x, m, "seq-mean-token-sum-norm"), 7 / 9)
    # an entirely empty batch is 0 in every mode, never NaN
    for mode in AGGREGATION_MODES:
        close(aggregate(x, torch.zeros_like(m), mode), 0.0)


def test_aggregate_ignores_nan_and_inf_in_padding():
    x = t([[1.0, 2.0, float("nan")], [4.0, float("inf"), float("-inf")]])
    x.requires_grad_(True)
    m = t(M)
    # same as test_aggregate_modes_by_hand: padding never enters the arithmetic
    close(aggregate(x, m, "token-mean"), 7 / 3)
    close(aggregate(x, m, "seq-mean-token-mean"), 2.75)
    aggregate(x, m, "seq-mean-token-sum-norm").backward()
    # d/dx = 1 / (norm_len * B) = 1/6 on valid tokens, 0 on padding
    torch.testing.assert_close(x.grad, t([[1 / 6, 1 / 6, 0.0], [1 / 6, 0.0, 0.0]]))


def test_aggregate_global_counts_make_micro_batches_sum_to_full_batch():
    x, m = t(X), t(M)
    top, bottom = (x[:1], m[:1]), (x[1:], m[1:])
    # token-mean with global_tokens = 3: (1 + 2)/3 + 4/3 = 7/3
    parts = [aggregate(*half, "token-mean", global_tokens=3.0) for half in (top, bottom)]
    close(parts[0], 1.0)
    close(parts[1], 4 / 3)
    close(parts[0] + parts[1], aggregate(x, m, "token-mean").item())
    # seq modes with global_seqs = 2: 1.5/2 + 4/2 = 2.75 and (1 + 4/3)/2 = 7/6
    for mode, whole in (("seq-mean-token-mean", 2.75), ("seq-mean-token-sum-norm", 7 / 6)):
        total = sum(aggregate(*half, mode, global_seqs=2.0) for half in (top, bottom))
        close(total, whole)
    # global counts may be tensors (the result of an all-reduce)
    close(aggregate(x, m, "token-mean", global_tokens=torch.tensor(6.0, dtype=F64)), 7 / 6)
    # without global counts the halves are local means and do NOT add up: 1.5 + 4 != 2.75
    local = sum(aggregate(*half, "seq-mean-token-mean") for half in (top, bottom))
    assert abs(local.item() - 2.75) > 1


def test_aggregate_rejects_bad_arguments():
    x, m = t(X), t(M)
    with pytest.raises(ValueError, match="seq-mean-token-mean.*token-mean.*seq-mean-token-sum-norm"):
        aggregate(x, m, "sum")
    with pytest.raises(ValueError, match="norm_len"):
        aggregate(x, m, "token-mean", norm_len=4)
    with pytest.raises(ValueError, match="same shape"):
        aggregate(x, m[:, :2], "token-mean")
    with pytest.raises(ValueError, match="positive"):
        aggregate(x, m, "token-mean", global_tokens=0.0)


# --------------------------------------------------------------------------------------------
# Shared example for the losses
# --------------------------------------------------------------------------------------------
#   ratio r = [[1.5, 0.6, 1.0],      mask = [[1, 1, 1],     A = [+1, -1]
#              [1.1, 0.7, pad]]              [1, 1, 0]]     n = [3, 2], B = 2, T = 3
#   logp    = [[-1.0, -2.0, -0.5],
#              [-1.5, -0.25, pad]]
#   old_logp = logp - log r
LOGP = [[-1.0, -2.0, -0.5], [-1.5, -0.25, 0.0]]
RATIO = [[1.5, 0.6, 1.0], [1.1, 0.7, 1.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
ADV = [1.0, -1.0]


def example(adv_per_token: bool = False):
    logp = t(LOGP).requires_grad_(True)
    old = t(LOGP) - torch.log(t(RATIO))
    adv = t(ADV)
    if adv_per_token:
        adv = adv[:, None].expand(2, 3).clone()
    return logp, old, adv, t(MASK)


def test_registry_and_signatures():
    assert set(POLICY_LOSSES) == {"sapo", "grpo", "dapo", "dr_grpo", "gspo", "cispo", "sft"}
    for name, loss in POLICY_LOSSES.items():
        params = inspect.signature(loss.__call__).parameters
        assert list(params)[:4] == ["logprobs", "old_logprobs", "advantages", "mask"]
        assert SHARED_KEYWORDS <= set(params), name
        # a loss's own hyperparameters are exactly its registry entry's, with their defaults
        assert not SHARED_KEYWORDS & set(loss.hyperparameters), name
        assert set(inspect.signature(loss.term).parameters) - {"x"} == set(loss.hyperparameters), name
    assert sapo.hyperparameters == {"tau_pos": 1.0, "tau_neg": 1.05, "log_ratio_clamp": 20.0}
    assert grpo.hyperparameters == {"clip_low": 0.2, "clip_high": 0.2}
    assert dapo.hyperparameters == {"clip_low": 0.2, "clip_high": 0.28}
    assert gspo.hyperparameters == {"clip_low": 3e-4, "clip_high": 4e-4}
    assert cispo.hyperparameters == {"clip_high": 5.0}
    assert loss_hyperparameters("sapo") == {"tau_pos", "tau_neg", "log_ratio_clamp"}
    for name in ("grpo", "dapo", "dr_grpo", "gspo"):
        assert loss_hyperparameters(name) == {"clip_low", "clip_high"}
    assert loss_hyperparameters("cispo") == {"clip_high"}
    assert {n: default_aggregation(n) for n in POLICY_LOSSES} == {
        "sapo": "seq-mean-token-mean",
        "grpo": "seq-mean-token-mean",
        "dapo": "token-mean",
        "dr_grpo": "seq-mean-token-sum-norm",
        "gspo": "seq-mean-token-mean",
        "cispo": "token-mean",
        "sft": "token-mean",
    }
    with pytest.raises(ValueError, match="registered losses"):
        loss_hyperparameters("ppo")
    # a foreign hyperparameter is an error, not silently ignored
    with pytest.raises(TypeError):
        grpo(*example(), tau_pos=1.0)


# --------------------------------------------------------------------------------------------
# GRPO / DAPO / Dr.GRPO
# --------------------------------------------------------------------------------------------
# GRPO, clip [0.8, 1.2], per token -min(r A, clip(r) A):
#   row 0 (A=+1): r=1.5 -> -min(1.5, 1.2) = -1.2 (clipped); r=0.6 -> -min(0.6, 0.8) = -0.6;
#                 r=1.0 -> -1.0.                               row sum -2.8, mean -14/15
#   row 1 (A=-1): r=1.1 -> -min(-1.1, -1.1) = 1.1; r=0.7 -> -min(-0.7, -0.8) = 0.8 (clipped).
#                                                              row sum 1.9, mean 19/20


def test_grpo_values_gradient_and_clip_frac():
    logp, old, adv, mask = example()
    loss, metrics = grpo(logp, old, adv, mask)
    # seq-mean-token-mean: (-14/15 + 19/20) / 2 = (1/60) / 2 = 1/120
    close(loss, 1 / 120)
    # clipped tokens (0,0) and (1,1): 2 of 5 valid
    close(metrics["clip_frac"], 0.4)
    # ratio/mean = (1.5 + 0.6 + 1.0 + 1.1 + 0.7) / 5 = 0.98; ratio/max = 1.5 (padding ignored)
    close(metrics["ratio/mean"], 0.98)
    close(metrics["ratio/max"], 1.5)
    loss.backward()
    # unclipped: d/dlogp = -A r / (n_i B): (0,1) -0.6/6 = -0.1, (0,2) -1/6, (1,0) +1.1/4 = 0.275
    # clipped tokens and padding: 0
    torch.testing.assert_close(logp.grad, t([[0.0, -0.1, -1 / 6], [0.275, 0.0, 0.0]]))

    # token-mean: (-2.8 + 1.9) / 5 = -0.18
    loss, _ = grpo(*example(), aggregation="token-mean")
    close(loss, -0.18)


def test_dapo_clip_higher_and_token_mean_default():
    # clip [0.8, 1.28]: (0,0) becomes -min(1.5, 1.28) = -1.28, rest as GRPO.
    # row 0 sum -1.28 - 0.6 - 1.0 = -2.88, row 1 sum 1.9
    logp, old, adv, mask = example()
    loss, metrics = dapo(logp, old, adv, mask)
    # token-mean: (-2.88 + 1.9) / 5 = -0.196
    close(loss, -0.196)
    close(metrics["clip_frac"], 0.4)
    # seq-mean-token-mean: (-2.88/3 + 1.9/2) / 2 = (-0.96 + 0.95) / 2 = -0.005
    close(dapo(*example(), aggregation="seq-mean-token-mean")[0], -0.005)
    # r = 1.25 with A > 0 is clipped by GRPO (> 1.2) but not by DAPO (< 1.28): grads differ
    logp = t([[0.0]]).requires_grad_(True)
    old, adv, mask = t([[-math.log(1.25)]]), t([1.0]), t([[1.0]])
    dapo(logp, old, adv, mask)[0].backward()
    close(logp.grad[0, 0], -1.25)  # -A r
    logp.grad = None
    grpo(logp, old, adv, mask)[0].backward()
    close(logp.grad[0, 0], 0.0)
    # clip_frac uses each side's own bound: r = 0.75 with A < 0 is below 1 - 0.2 (clipped),
    # r = 1.25 with A > 0 is below 1 + 0.28 (not clipped): 1 of 2
    ratio = t([[0.75], [1.25]])
    _, metrics = dapo(t([[0.0], [0.0]]), -torch.log(ratio), t([-1.0, 1.0]), t([[1.0], [1.0]]))
    close(metrics["clip_frac"], 0.5)


def test_dr_grpo_constant_length_normaliser():
    # per-token values as GRPO: row sums -2.8 and 1.9
    # default norm_len = T = 3: (-2.8/3 + 1.9/3) / 2 = -0.9/6 = -0.15
    close(dr_grpo(*example())[0], -0.15)
    # norm_len = 4: (-2.8/4 + 1.9/4) / 2 = -0.1125
    close(dr_grpo(*example(), norm_len=4)[0], -0.1125)
    # token-mean: -0.18 (same as GRPO, same clip range)
    close(dr_grpo(*example(), aggregation="token-mean")[0], -0.18)


# --------------------------------------------------------------------------------------------
# SAPO
# --------------------------------------------------------------------------------------------
# s = sigmoid(tau (r - 1)), f = s * 4 / tau, gate weight w = 4 s (1 - s)
#   row 0, tau_pos = 1:    r=1.5: s=sigmoid(0.5)=0.622459, f=2.489837, w=0.940015
#                          r=0.6: s=sigmoid(-0.4)=0.401312, f=1.605249, w=0.961043
#                          r=1.0: s=0.5, f=2, w=1
#   row 1, tau_neg = 1.05: r=1.1: s=sigmoid(0.105)=0.526226, f=2.004670, w=0.997249
#                          r=0.7: s=sigmoid(-0.315)=0.421895, f=1.607218, w=0.975598
#   per token -f A: row 0 mean -(2.489837 + 1.605249 + 2)/3 = -2.031696
#                   row 1 mean +(2.004670 + 1.607218)/2   = +1.805944


def test_sapo_value_and_gate_metrics():
    loss, metrics = sapo(*example())
    # seq-mean-token-mean: (-2.031696 + 1.805944) / 2 = -0.112876
    close(loss, -0.112876)
    # token-mean: (3 * -2.031696 + 2 * 1.805944) / 5 = (-6.095087 + 3.611888) / 5 = -0.496640
    close(sapo(*example(), aggregation="token-mean")[0], -0.496640)
    # gate_pos = (0.940015 + 0.961043 + 1) / 3 = 0.967019; gate_neg = (0.997249 + 0.975598)/2 = 0.986424
    close(metrics["sapo/gate_pos"], 0.967019)
    close(metrics["sapo/gate_neg"], 0.986424)
    close(metrics["sapo/gate_below_half"], 0.0)


def test_sapo_gate_below_half_and_empty_selection():
    # r = [3.0, 1.0], A = +1 for both (tau 1): w(3) = 4 sigmoid(2)(1 - sigmoid(2))
    #   = 4 * 0.880797 * 0.119203 = 0.419974 < 0.5; w(1) = 1. No A <= 0 token at all.
    logp = t([[0.0, 0.0]])
    old = t([[-math.log(3.0), 0.0]])
    _, metrics = sapo(logp, old, t([1.0]), t([[1.0, 1.0]]))
    close(metrics["sapo/gate_below_half"], 0.5)  # 1 of 2 tokens
    close(metrics["sapo/gate_pos"], (0.419974 + 1.0) / 2)
    close(metrics["sapo/gate_neg"], 0.0)  # empty selection -> 0, not NaN


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_sapo_gradient_at_ratio_one_is_plain_policy_gradient(mode):
    torch.manual_seed(0)
    logp = torch.randn(3, 4, dtype=F64).requires_grad_(True)
    adv = torch.randn(3, dtype=F64)
    mask = t([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    sapo(logp, logp.detach().clone(), adv, mask, aggregation=mode)[0].backward()
    sapo_grad = logp.grad.clone()
    logp.grad = None
    # plain policy gradient: -A * logp, reduced the same way
    aggregate(-adv[:, None] * logp, mask, mode).backward()
    torch.testing.assert_close(sapo_grad, logp.grad)


@pytest.mark.parametrize("r", [1.5, 0.6])
def test_sapo_negative_advantage_gets_smaller_gate(r):
    # Same ratio on both rows; row 0 A = +1 (tau 1), row 1 A = -1 (tau 1.05).
    # r=1.5: w_pos = 0.940015 > w_neg = 4 sigmoid(0.525)(1 - sigmoid(0.525)) = 0.934140
    # r=0.6: w_pos = 0.961043 > w_neg = 4 sigmoid(-0.42)(1 - sigmoid(-0.42)) = 0.957165
    logp = t([[0.0], [0.0]]).requires_grad_(True)
    old = t([[-math.log(r)], [-math.log(r)]])
    _, metrics = sapo(logp, old, t([1.0, -1.0]), t([[1.0], [1.0]]))
    w_pos, w_neg = {1.5: (0.940015, 0.934140), 0.6: (0.961043, 0.957165)}[r]
    close(metrics["sapo/gate_pos"], w_pos)
    close(metrics["sapo/gate_neg"], w_neg)
    assert metrics["sapo/gate_neg"] < metrics["sapo/gate_pos"]


def test_sapo_gradient_by_hand():
    # d loss / d logp_t = -A w(r) r / (n_i B) under seq-mean-token-mean:
    #   (0,0) -0.940015 * 1.5 / 6 = -0.235004   (0,1) -0.961043 * 0.6 / 6 = -0.096104
    #   (0,2) -1 * 1 / 6 = -0.166667
    #   (1,0) +0.997249 * 1.1 / 4 = 0.274243    (1,1) +0.975598 * 0.7 / 4 = 0.170730
    logp, old, adv, mask = example()
    sapo(logp, old, adv, mask)[0].backward()
    expected = t([[-0.235004, -0.096104, -1 / 6], [0.274243, 0.170730, 0.0]])
    torch.testing.assert_close(logp.grad, expected, atol=1e-6, rtol=0)


def test_sapo_log_ratio_clamp_keeps_loss_finite():
    # log-ratio 100 is clamped to 20: r = exp(20) = 4.85e8, s = sigmoid(4.85e8) = 1,
    # f = 4 / tau = 4 -> loss = -4 * A = -4 (float32, where exp(100) alone would overflow to inf)
    logp = torch.tensor([[0.0]], requires_grad=True)
    loss, metrics = sapo(logp, torch.tensor([[-100.0]]), torch.tensor([1.0]), torch.tensor([[1.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    close(loss, -4.0)
    close(logp.grad[0, 0], 0.0)  # gradient is stopped by the clamp
    assert torch.isfinite(metrics["ratio/max"])


# --------------------------------------------------------------------------------------------
# GSPO
# --------------------------------------------------------------------------------------------


def test_gspo_sequence_ratio_and_value():
    # s_0 = exp((log 1.5 + log 0.6 + log 1)/3) = 0.9^(1/3) = 0.965489; A = +1:
    #   -min(0.965489, clip -> 0.9997) = -0.965489 (not clipped)
    # s_1 = exp((log 1.1 + log 0.7)/2) = sqrt(0.77) = 0.877496; A = -1:
    #   -min(-0.877496, -0.9997) = 0.9997 (clipped)
    logp, old, adv, mask = example()
    loss, metrics = gspo(logp, old, adv, mask)
    # seq-mean-token-mean: (-0.965489 + 0.9997) / 2 = 0.017106
    close(loss, 0.017106)
    # ratio metrics describe s_it: (3 * 0.965489 + 2 * 0.877496) / 5 = 0.930292, max 0.965489
    close(metrics["ratio/mean"], 0.930292)
    close(metrics["ratio/max"], 0.965489)
    close(metrics["clip_frac"], 0.4)  # both tokens of row 1
    loss.backward()
    # row 0: every token -s_0 A / (3 * 2) = -0.160915; row 1 clipped: 0
    g = -0.965489 / 6
    torch.testing.assert_close(logp.grad, t([[g, g, g], [0.0, 0.0, 0.0]]), atol=1e-6, rtol=0)
    # token-mean: (3 * -0.965489 + 2 * 0.9997) / 5 = -0.179414
    close(gspo(*example(), aggregation="token-mean")[0], -0.179414)


def test_gspo_tokens_share_gradient_scale():
    # per-token log-ratios 1e-4, -1e-4, 3e-4 differ, but s = exp(mean) = exp(1e-4) is inside
    # [1 - 3e-4, 1 + 4e-4], so each token's gradient is -s A / n = -exp(1e-4) * 2 / 3
    logp = t([[-1.0, -2.0, -3.0]]).requires_grad_(True)
    old = logp.detach() - t([[1e-4, -1e-4, 3e-4]])
    loss, metrics = gspo(logp, old, t([2.0]), t([[1.0, 1.0, 1.0]]))
    loss.backward()
    expected = -math.exp(1e-4) * 2 / 3
    torch.testing.assert_close(logp.grad, t([[expected] * 3]))
    close(metrics["clip_frac"], 0.0)


# --------------------------------------------------------------------------------------------
# CISPO
# --------------------------------------------------------------------------------------------


def test_cispo_value_and_gradient():
    # per token -min(r, 6) A logp (no truncation, r <= 1.5):
    #   row 0 (A=+1): -1.5*-1.0 = 1.5, -0.6*-2.0 = 1.2, -1.0*-0.5 = 0.5      sum 3.2
    #   row 1 (A=-1): 1.1*-1.5 = -1.65, 0.7*-0.25 = -0.175                   sum -1.825
    logp, old, adv, mask = example()
    old.requires_grad_(True)
    loss, metrics = cispo(logp, old, adv, mask)
    # token-mean: (3.2 - 1.825) / 5 = 0.275
    close(loss, 0.275)
    close(metrics["clip_frac"], 0.0)
    loss.backward()
    # d/dlogp = -w A / 5: [[-0.3, -0.12, -0.2], [0.22, 0.14, 0]]; the weight is detached,
    # so no gradient reaches old_logprobs either
    torch.testing.assert_close(logp.grad, t([[-0.3, -0.12, -0.2], [0.22, 0.14, 0.0]]))
    assert old.grad is None or torch.all(old.grad == 0)
    # seq-mean-token-mean: (3.2/3 - 1.825/2) / 2 = (16/15 - 73/80) / 2 = (37/240) / 2 = 37/480
    close(cispo(*example(), aggregation="seq-mean-token-mean")[0], 37 / 480)


def test_cispo_truncates_weight_but_keeps_gradient():
    # r = [10, 2], clip_high = 5: weights min(10, 6) = 6 and 2; A = +1, logp = [-1, -1]
    # loss (token-mean) = (6 + 2) / 2 = 4; d/dlogp = [-6/2, -2/2] = [-3, -1]
    logp = t([[-1.0, -1.0]]).requires_grad_(True)
    old = logp.detach() - torch.log(t([[10.0, 2.0]]))
    loss, metrics = cispo(logp, old, t([1.0]), t([[1.0, 1.0]]))
    loss.backward()
    close(loss, 4.0)
    torch.testing.assert_close(logp.grad, t([[-3.0, -1.0]]))
    close(metrics["clip_frac"], 0.5)
    # clip_high = 0.5 caps both at 1.5: loss (1.5 + 1.5)/2 = 1.5
    close(cispo(logp, old, t([1.0]), t([[1.0, 1.0]]), clip_high=0.5)[0], 1.5)


# --------------------------------------------------------------------------------------------
# Shared behaviour: KL, entropy, advantages, aggregation, padding
# --------------------------------------------------------------------------------------------


def test_kl_penalty_by_hand():
    # ref - logp = d = [[log 2, 0, -log 2], [log 2, 0, pad]]; k3 = e^d - d - 1:
    #   d = log 2: 2 - 0.693147 - 1 = 0.306853;  d = 0: 0;  d = -log 2: 0.5 + 0.693147 - 1 = 0.193147
    #   row 0 mean (0.306853 + 0 + 0.193147)/3 = 0.5/3 = 1/6;  row 1 mean 0.306853/2 = 0.153426
    #   seq-mean-token-mean: (0.166667 + 0.153426) / 2 = 0.160047
    logp, old, adv, mask = example()
    ln2 = math.log(2.0)
    ref = logp.detach() + t([[ln2, 0.0, -ln2], [ln2, 0.0, 123.0]])  # padding value is ignored
    loss, metrics = grpo(logp, old, adv, mask, ref_logprobs=ref, kl_coef=0.1)
    close(metrics["kl"], 0.160047)
    # GRPO part 1/120 (above) + 0.1 * 0.160047
    close(loss, 1 / 120 + 0.1 * 0.160047)
    # kl_coef = 0 with ref given: reported, not added
    loss0, metrics0 = grpo(*example(), ref_logprobs=ref)
    close(loss0, 1 / 120)
    close(metrics0["kl"], 0.160047)
    with pytest.raises(ValueError, match="ref_logprobs"):
        sapo(*example(), kl_coef=0.1)


def test_entropy_metric_is_masked_mean():
    # entropy [[1, 2, 3], [4, 5, 100(pad)]]: (1 + 2 + 3 + 4 + 5) / 5 = 3
    ent = t([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    for fn in POLICY_LOSSES.values():
        close(fn(*example(), entropy=ent)[1]["entropy"], 3.0)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_advantages_per_sequence_equal_per_token(name):
    fn = POLICY_LOSSES[name]
    a = example()
    b = example(adv_per_token=True)
    loss_a, metrics_a = fn(*a)
    loss_b, metrics_b = fn(*b)
    loss_a.backward()
    loss_b.backward()
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(a[0].grad, b[0].grad)
    assert metrics_a.keys() == metrics_b.keys()


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_every_loss_honours_every_aggregation_mode(name):
    torch.manual_seed(1)
    logp = -torch.rand(3, 5, dtype=F64)
    old = logp + 0.3 * torch.randn(3, 5, dtype=F64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    mask = t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    values = {}
    for mode in AGGREGATION_MODES:
        loss, _ = POLICY_LOSSES[name](logp, old, adv, mask, aggregation=mode)
        assert torch.isfinite(loss)
        values[mode] = loss.item()
    # on a ragged mask the three reductions differ; a loss ignoring `aggregation` would not
    assert len({round(v, 9) for v in values.values()}) == len(AGGREGATION_MODES), values
    with pytest.raises(ValueError, match="valid modes"):
        POLICY_LOSSES[name](logp, old, adv, mask, aggregation="sum")


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_padding_garbage_and_metrics_are_detached(name):
    logp, old, adv, mask = example()
    clean_loss, _ = POLICY_LOSSES[name](logp, old, adv, mask)
    # garbage in the padded position (1, 2) of every input must change nothing
    logp2 = logp.detach().clone()
    logp2[1, 2] = float("-inf")
    logp2.requires_grad_(True)
    old2 = old.clone()
    old2[1, 2] = float("nan")
    adv2 = adv[:, None].expand(2, 3).clone()
    adv2[1, 2] = float("nan")
    loss, metrics = POLICY_LOSSES[name](logp2, old2, adv2, mask)
    loss.backward()
    torch.testing.assert_close(loss, clean_loss)
    assert torch.isfinite(logp2.grad).all() and logp2.grad[1, 2] == 0
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, key
        assert not value.requires_grad, key
        assert torch.isfinite(value), key
    assert {"ratio/mean", "ratio/max"} <= metrics.keys()


def test_sft_is_the_token_mean_nll_by_hand():
    # The shared example's valid log-probs -1, -2, -0.5 | -1.5, -0.25 (pad 0.0 ignored), A = 1:
    #   NLL = (1 + 2 + 0.5 + 1.5 + 0.25) / 5 = 5.25 / 5 = 1.05; d loss / d logp = -1/5 = -0.2, pad 0.
    logp, old, _, mask = example()
    loss, metrics = sft(logp, old, t([1.0, 1.0]), mask)
    loss.backward()
    close(loss, 1.05)
    close(metrics["sft/nll"], 1.05)
    assert metrics["sft/nll#tokens"].item() == 5
    torch.testing.assert_close(logp.grad, t([[-0.2, -0.2, -0.2], [-0.2, -0.2, 0.0]]), atol=1e-12, rtol=0)
    # old log-probs play no part: the same loss against any old
    close(sft(logp.detach(), old + 3.0, t([1.0, 1.0]), mask)[0], 1.05)
    # one micro-batch of a 10-token minibatch: 5.25 / 10 = 0.525 (its share of the minibatch mean)
    close(sft(logp.detach(), old, t([1.0, 1.0]), mask, global_tokens=10.0)[0], 0.525)
    # A weights a sequence: A = (1, 0) leaves row 0 only, 3.5 / 5 = 0.7; the metric is the NLL still
    loss0, metrics0 = sft(logp.detach(), old, t([1.0, 0.0]), mask)
    close(loss0, 0.7)
    close(metrics0["sft/nll"], 1.05)


def test_sapo_gate_metrics_leave_out_zero_advantage_tokens():
    # Row 0 A = -1 at r = 1.5 (w = 0.934140, see above); row 1 A = 0 at r = 3: no gradient, no gate.
    logp = t([[0.0], [0.0]])
    old = t([[-math.log(1.5)], [-math.log(3.0)]])
    _, metrics = sapo(logp, old, t([-1.0, 0.0]), t([[1.0], [1.0]]))
    close(metrics["sapo/gate_neg"], 0.934140)  # row 1's w(3) = 0.419974 would pull it to 0.677057
    assert metrics["sapo/gate_neg#tokens"].item() == 1 and metrics["sapo/gate_pos#tokens"].item() == 0


def test_sapo_tau_is_exact_in_float64():
    # One token, A = -1, r = 1.2, tau_neg = 1.05: loss = sigmoid(1.05 * 0.2) * 4 / 1.05
    #   = 0.552308 * 3.809524 = 2.104030, computed below in Python floats (fp64):
    expected = 1 / (1 + math.exp(-1.05 * 0.2)) * 4 / 1.05
    loss, _ = sapo(t([[0.0]]), t([[-math.log(1.2)]]), t([-1.0]), t([[1.0]]), tau_neg=1.05)
    assert abs(loss.item() - expected) < 1e-13  # a float32 tau (1.0499999523) is off by ~1e-8


# --------------------------------------------------------------------------------------------
# Entropy bonus (entropy_coef)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_entropy_bonus_value_and_gradient_by_hand(name):
    # one sequence, two response tokens and a pad; A = 0, so only the bonus acts.
    # value: -coef * mean_t H_t = -0.1 * (1.5 + 0.5) / 2 = -0.1
    # d/d logp_t: coef * (logp_t + H_t) / n = 0.1 * (-1 + 1.5) / 2 = 0.025 and 0.1 * (-2 + 0.5) / 2 = -0.075
    logprobs = torch.tensor([[-1.0, -2.0, float("nan")]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    entropy = torch.tensor([[1.5, 0.5, 100.0]])
    kwargs = dict(aggregation="seq-mean-token-mean", entropy=entropy)
    loss, metrics = POLICY_LOSSES[name](logprobs, logprobs.detach(), torch.zeros(1), mask, entropy_coef=0.1, **kwargs)
    loss.backward()
    assert loss.item() == pytest.approx(-0.1, abs=1e-6)
    assert logprobs.grad.tolist()[0][:2] == pytest.approx([0.025, -0.075], abs=1e-6)
    assert logprobs.grad[0, 2].item() == 0.0
    assert metrics["entropy"].item() == pytest.approx(1.0)
    off, _ = POLICY_LOSSES[name](logprobs, logprobs.detach(), torch.zeros(1), mask, **kwargs)
    assert off.item() == 0.0  # entropy_coef defaults to 0: no bonus


def test_entropy_bonus_gradient_is_the_entropy_gradient_in_expectation():
    # sampled tokens o ~ pi: sum_o pi(o) * grad(loss with token o) must equal -coef * grad H exactly
    z = torch.tensor([1.0, 0.2, -0.5, 2.0], requires_grad=True)
    logp = z.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum()
    (grad_h,) = torch.autograd.grad(entropy, z)
    expected = torch.zeros(4)
    for o in range(4):
        lp = z.log_softmax(-1)[o].view(1, 1)
        loss, _ = POLICY_LOSSES["sapo"](lp, lp.detach(), torch.zeros(1), torch.ones(1, 1, dtype=torch.bool),
                                        entropy=entropy.detach().view(1, 1), entropy_coef=0.1)
        (g,) = torch.autograd.grad(loss, z)
        expected += logp[o].exp().detach() * g
    assert expected.tolist() == pytest.approx((-0.1 * grad_h).tolist(), abs=1e-6)


def test_entropy_bonus_needs_the_entropy_and_a_non_negative_coef():
    lp, mask = torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="entropy_coef=0.1 needs entropy"):
        POLICY_LOSSES["sapo"](lp, lp, torch.zeros(1), mask, entropy_coef=0.1)
    with pytest.raises(ValueError, match="entropy_coef must be >= 0"):
        POLICY_LOSSES["sapo"](lp, lp, torch.zeros(1), mask, entropy=torch.ones(1, 2), entropy_coef=-0.1)


def test_the_trainer_passes_algorithm_entropy_coef_to_the_loss():
    from rlvr.config import load_config
    from rlvr.update import loss_kwargs

    cfg = load_config(None, ["algorithm.entropy_coef=0.05"])
    assert loss_kwargs(cfg)["entropy_coef"] == 0.05
    assert loss_kwargs(load_config(None, []))["entropy_coef"] == 0.0


def test_the_registry_is_the_configs_choices():
    """algorithm.loss accepts exactly the registered losses; algorithm.aggregation exactly the reductions."""
    from rlvr.config import AGGREGATIONS, LOSS_NAMES, AlgorithmConfig

    assert set(LOSS_NAMES) == set(POLICY_LOSSES)
    assert AGGREGATION_MODES == AGGREGATIONS
    assert set(default_aggregation(n) for n in POLICY_LOSSES) <= set(AGGREGATIONS)
    # the loss's own hyperparameter defaults live in the registry only: the config's are None
    algorithm = AlgorithmConfig()
    for name in POLICY_LOSSES:
        for key in loss_hyperparameters(name):
            assert getattr(algorithm, key) is None, key


# --------------------------------------------------------------------------------------------
# Importance weights (is_weights, rlvr.correction)
# --------------------------------------------------------------------------------------------
# The shared example with weights w = [[2.0, 0.5, 0.0], [1.0, 0.25, pad]] on SAPO's per-token
# -f(r) A (values above: row 0 -2.489837, -1.605249, -2; row 1 +2.004670, +1.607218):
#   row 0: -(2 * 2.489837 + 0.5 * 1.605249 + 0 * 2) / 3 = -5.782299 / 3 = -1.927433
#   row 1: +(1 * 2.004670 + 0.25 * 1.607218) / 2     = +2.406475 / 2 = +1.203237
IS_W = [[2.0, 0.5, 0.0], [1.0, 0.25, 7.0]]  # 7.0 sits on the pad: it must change nothing


def test_sapo_with_importance_weights_by_hand():
    loss, _ = sapo(*example(), is_weights=t(IS_W))
    close(loss, (-1.927433 + 1.203237) / 2)  # -0.362098, seq-mean-token-mean
    # token-mean: (-5.782299 + 2.406475) / 5 = -0.675165 (the 0-weight token still counts in the 5)
    close(sapo(*example(), is_weights=t(IS_W), aggregation="token-mean")[0], -0.675165)


def test_sapo_gradient_with_weights_is_w_times_the_unweighted_one():
    # d loss / d logp_t = -w_t f'(r) r A / (n_i B): the unweighted gradients of
    # test_sapo_gradient_by_hand times w, and exactly 0 where w = 0 (token (0, 2)) or on the pad.
    #   (0,0) 2 * -0.235004 = -0.470008   (0,1) 0.5 * -0.096104 = -0.048052   (0,2) 0
    #   (1,0) 1 * 0.274243 = 0.274243     (1,1) 0.25 * 0.170730 = 0.042683    (1,2) pad 0
    logp, old, adv, mask = example()
    sapo(logp, old, adv, mask, is_weights=t(IS_W))[0].backward()
    expected = t([[-0.470008, -0.048052, 0.0], [0.274243, 0.042683, 0.0]])
    torch.testing.assert_close(logp.grad, expected, atol=1e-6, rtol=0)
    assert logp.grad[0, 2].item() == 0.0 and logp.grad[1, 2].item() == 0.0
    # the autograd identity, token by token, against the unweighted run
    logp2, *_ = example()
    sapo(logp2, old, adv, mask)[0].backward()
    torch.testing.assert_close(logp.grad, logp2.grad * t(IS_W) * t(MASK), atol=1e-15, rtol=0)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_weights_of_one_leave_every_loss_bit_identical(name):
    logp, old, adv, mask = example()
    kwargs = dict(ref_logprobs=old + 0.3, kl_coef=0.1, entropy=t([[1.0, 2.0, 3.0], [0.5, 0.25, 9.0]]),
                  entropy_coef=0.05)
    loss, metrics = POLICY_LOSSES[name](logp, old, adv, mask, **kwargs)
    loss.backward()
    logp1, *_ = example()
    loss1, metrics1 = POLICY_LOSSES[name](logp1, old, adv, mask, is_weights=torch.ones(2, 3, dtype=F64), **kwargs)
    loss1.backward()
    assert torch.equal(loss, loss1) and torch.equal(logp.grad, logp1.grad)
    assert metrics.keys() == metrics1.keys() and all(torch.equal(metrics[k], metrics1[k]) for k in metrics)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_weights_scale_every_loss_term_but_not_the_bonus_or_the_kl(name):
    # Weights of 0 everywhere leave only the entropy bonus and the KL penalty: the same loss and
    # gradient as advantages of 0 (the term is then 0 for every loss), whatever the weights would do.
    logp, old, adv, mask = example()
    kwargs = dict(ref_logprobs=old + 0.3, kl_coef=0.1, entropy=t([[1.0, 2.0, 3.0], [0.5, 0.25, 9.0]]),
                  entropy_coef=0.05)
    loss, metrics = POLICY_LOSSES[name](logp, old, adv, mask, is_weights=torch.zeros(2, 3, dtype=F64), **kwargs)
    loss.backward()
    logp0, *_ = example()
    loss0, _ = POLICY_LOSSES[name](logp0, old, torch.zeros(2, dtype=F64), mask, **kwargs)
    loss0.backward()
    torch.testing.assert_close(loss, loss0, atol=1e-12, rtol=0)
    torch.testing.assert_close(logp.grad, logp0.grad, atol=1e-12, rtol=0)
    assert loss.item() != 0.0 and metrics["kl"].item() > 0
    # and a weight w on every token scales the term alone: loss(w) - loss(0) = w * (loss(1) - loss(0))
    full, _ = POLICY_LOSSES[name](logp.detach(), old, adv, mask, is_weights=torch.ones(2, 3, dtype=F64), **kwargs)
    half, _ = POLICY_LOSSES[name](logp.detach(), old, adv, mask, is_weights=torch.full((2, 3), 0.5, dtype=F64),
                                  **kwargs)
    torch.testing.assert_close(half - loss0, 0.5 * (full - loss0), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_importance_weights_on_the_pad_never_leak(name):
    logp, old, adv, mask = example()
    clean, _ = POLICY_LOSSES[name](logp, old, adv, mask, is_weights=t(IS_W))
    for garbage in (float("nan"), float("inf")):
        w = t(IS_W)
        w[1, 2] = garbage
        logp2, *_ = example()
        loss, _ = POLICY_LOSSES[name](logp2, old, adv, mask, is_weights=w)
        loss.backward()
        torch.testing.assert_close(loss, clean)
        assert torch.isfinite(logp2.grad).all() and logp2.grad[1, 2] == 0
    with pytest.raises(ValueError, match=r"is_weights must be \[B, T\] = \(2, 3\)"):
        POLICY_LOSSES[name](logp, old, adv, mask, is_weights=torch.ones(2))
