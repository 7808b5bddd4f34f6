"""rlvr.correction: importance weights pi_old / pi_rollout by hand, their metrics, the modes and the config."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.config import ConfigError, RolloutCorrectionConfig, check_config, load_config
from rlvr.correction import ACTIVE_MODES, importance_weights, resolve_mode

F64 = torch.float64

# The 2 x 3 example. Token weights w = exp(old - rollout):
#   w = [[1.5, 0.25, 3.0],      mask = [[1, 1, 1],
#        [1.2, 0.8,  pad]]              [1, 1, 0]]     5 valid tokens
# The pad holds old = -inf and rollout = NaN: nothing may leak from it.
W = [[1.5, 0.25, 3.0], [1.2, 0.8, 1.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
# k3 = w - 1 - log w: 0.094535, 0.636294, 0.901388, 0.017678, 0.023144 -> mean 0.334608
K3_MEAN = 0.334608


def example():
    rollout = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.25, float("nan")]], dtype=F64)
    old = rollout + torch.log(torch.tensor(W, dtype=F64))
    old[1, 2] = float("-inf")
    return old, rollout, torch.tensor(MASK, dtype=F64)


def weights(mode, **kwargs):
    return importance_weights(*example(), mode=mode, **kwargs)


def close(metric, expected, tol=1e-6):
    assert abs(metric.item() - expected) < tol, f"{metric.item()} != {expected}"


def test_token_truncate_by_hand():
    # min(w, 2): [[1.5, 0.25, 2.0], [1.2, 0.8, 0 (pad)]]; 1 of 5 tokens capped (w = 3)
    w, m = weights("token_truncate", cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.25, 2.0], [1.2, 0.8, 0.0]], dtype=F64))
    close(m["rollout_is/weight_mean"], (1.5 + 0.25 + 2.0 + 1.2 + 0.8) / 5)  # 1.15
    close(m["rollout_is/capped_frac"], 0.2)
    close(m["rollout_is/weight_max"], 3.0)  # before the cap
    close(m["rollout_is/kl"], K3_MEAN)
    close(m["rollout_is/nan_frac"], 0.0)
    assert m["rollout_is/weight_mean#tokens"].item() == 5 and "rollout_is/masked_frac" not in m
    assert not w.requires_grad and all(not v.requires_grad and v.dim() == 0 for v in m.values())


def test_token_mask_by_hand():
    # keep 0.5 <= w <= 2: 1.5, 1.2 and 0.8 keep their weight; 0.25 and 3.0 are dropped (2 of 5)
    w, m = weights("token_mask", mask_low=0.5, mask_high=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.0, 0.0], [1.2, 0.8, 0.0]], dtype=F64))
    close(m["rollout_is/weight_mean"], (1.5 + 1.2 + 0.8) / 5)  # 0.7
    close(m["rollout_is/masked_frac"], 0.4)
    close(m["rollout_is/weight_max"], 3.0)
    # bounds are inclusive: w = 1.5 at mask_high = 1.5 is kept
    w, m = weights("token_mask", mask_low=0.8, mask_high=1.5)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.0, 0.0], [1.2, 0.8, 0.0]], dtype=F64))


def test_sequence_modes_use_one_geometric_mean_per_response():
    # row 0: (1.5 * 0.25 * 3.0)^(1/3) = 1.125^(1/3) = 1.040042;  row 1: (1.2 * 0.8)^(1/2) = 0.979796
    # (the product would give 1.125 and 0.96)
    g0, g1 = 1.125 ** (1 / 3), 0.96 ** 0.5
    w, m = weights("sequence_truncate", cap=1.02)
    # row 0 capped at 1.02 (its 3 tokens: 3 of 5 capped), row 1 kept
    torch.testing.assert_close(w, torch.tensor([[1.02, 1.02, 1.02], [g1, g1, 0.0]], dtype=F64))
    close(m["rollout_is/weight_mean"], (3 * 1.02 + 2 * g1) / 5)  # 1.003918
    close(m["rollout_is/capped_frac"], 0.6)
    close(m["rollout_is/weight_max"], g0)  # 1.040042
    close(m["rollout_is/kl"], K3_MEAN)  # always per token
    # keep 0.99 <= w_i <= 1.05: row 0 kept with its weight (the product 1.125 would be dropped), row 1 dropped
    w, m = weights("sequence_mask", mask_low=0.99, mask_high=1.05)
    torch.testing.assert_close(w, torch.tensor([[g0, g0, g0], [0.0, 0.0, 0.0]], dtype=F64))
    close(m["rollout_is/weight_mean"], 3 * g0 / 5)  # 0.624025
    close(m["rollout_is/masked_frac"], 0.4)


@pytest.mark.parametrize("mode", ACTIVE_MODES)
def test_padding_never_leaks_and_equal_policies_give_weight_one(mode):
    old, rollout, mask = example()
    w, m = importance_weights(old, rollout, mask, mode=mode)
    assert torch.isfinite(w).all() and w[1, 2] == 0
    assert all(torch.isfinite(v) for v in m.values())
    # pi_old = pi_rollout: every valid weight is exactly 1, nothing capped or masked, KL 0
    w, m = importance_weights(old, old.clone(), mask, mode=mode)
    torch.testing.assert_close(w, torch.tensor(MASK, dtype=F64))
    hit = "rollout_is/capped_frac" if mode.endswith("truncate") else "rollout_is/masked_frac"
    assert m[hit].item() == 0 and m["rollout_is/kl"].item() == 0 and m["rollout_is/weight_max"].item() == 1


@pytest.mark.parametrize("mode", ACTIVE_MODES)
def test_a_nan_gap_on_a_valid_token_is_dropped_and_counted(mode):
    old, rollout, mask = example()
    rollout[0, 1] = float("nan")  # a broken engine log-prob on a response token
    w, m = importance_weights(old, rollout, mask, mode=mode, cap=2.0, mask_low=0.5, mask_high=2.0)
    assert torch.isfinite(w).all() and w[0, 1] == 0
    if mode.startswith("sequence"):
        assert (w[0] == 0).all()  # its whole response: its geometric mean is unknown
        close(m["rollout_is/nan_frac"], 3 / 5)
    else:
        close(m["rollout_is/nan_frac"], 1 / 5)
        assert w[0, 0] == 1.5  # the neighbours keep theirs
    assert all(torch.isfinite(v) for v in m.values())


def test_huge_gaps_are_bounded_and_inf_log_probs_give_finite_weights():
    # gap +100 -> log w clamped to 20: w = exp(20) = 4.85e8 (capped at 2); gap -inf -> w = exp(-20) = 2e-9
    old = torch.tensor([[0.0, float("-inf")]])
    rollout = torch.tensor([[-100.0, -1.0]])
    w, m = importance_weights(old, rollout, torch.ones(1, 2), mode="token_truncate")
    assert w[0, 0].item() == 2.0 and 0 < w[0, 1].item() < 3e-9
    assert m["rollout_is/weight_max"].item() == pytest.approx(math.exp(20), rel=1e-6)
    assert all(torch.isfinite(v) for v in m.values())
    w, _ = importance_weights(old, rollout, torch.ones(1, 2), mode="token_mask")
    assert w.tolist() == [[0.0, 0.0]]


def test_no_valid_token_reports_counts_of_zero_not_nan():
    w, m = importance_weights(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), mode="sequence_mask")
    assert (w == 0).all() and m["rollout_is/weight_max"].item() == 0
    assert m["rollout_is/weight_mean#tokens"].item() == 0 and torch.isfinite(m["rollout_is/weight_mean"])


def test_bad_arguments_say_what_to_do():
    old, rollout, mask = example()
    with pytest.raises(ValueError, match="resolve 'auto' with resolve_mode"):
        importance_weights(old, rollout, mask, mode="auto")
    with pytest.raises(ValueError, match="pass no weights at all for 'off'"):
        importance_weights(old, rollout, mask, mode="off")
    with pytest.raises(ValueError, match=r"must all be \[B, T\]"):
        importance_weights(old, rollout[:, :2], mask, mode="token_mask")


def test_auto_is_token_truncate_with_vllm_and_off_with_hf():
    assert resolve_mode("auto", "vllm") == "token_truncate"
    assert resolve_mode("auto", "hf") == "off"
    assert resolve_mode("sequence_mask", "hf") == "sequence_mask" and resolve_mode("off", "vllm") == "off"
    with pytest.raises(ValueError, match="choose one of auto, off"):
        resolve_mode("tis", "vllm")


def test_config_defaults_and_rules():
    cfg = load_config(None, [])
    rc = cfg.algorithm.rollout_correction
    assert (rc.mode, rc.cap, rc.mask_low, rc.mask_high) == ("auto", 2.0, 0.5, 2.0)
    assert set(ACTIVE_MODES) | {"auto", "off"} == {
        "auto", "off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"}
    assert not RolloutCorrectionConfig(mode="sequence_mask", mask_low=0.98, mask_high=1.02).problems()
    for bad, hint in (({"cap": 0.9}, "cap=0.9 must be >= 1"), ({"cap": float("inf")}, "finite"),
                      ({"mask_low": 1.0}, "0 <= mask_low < 1 < mask_high"),
                      ({"mask_high": 1.0}, "0 <= mask_low < 1 < mask_high"),
                      ({"mode": "tis"}, "choose one of auto, off, token_truncate")):
        problems = RolloutCorrectionConfig(**bad).problems()
        assert len(problems) == 1 and hint in problems[0], (bad, problems)
    with pytest.raises(ConfigError, match="algorithm.rollout_correction.cap=0.5"):
        check_config(load_config(None, ["algorithm.rollout_correction.cap=0.5"]))
    cfg = load_config(None, ["algorithm.rollout_correction.mode=token_mask", "rollout.engine=vllm"])
    assert resolve_mode(cfg.algorithm.rollout_correction.mode, cfg.rollout.engine) == "token_mask"
