import torch

from rlvr.advantages import group_advantages


def test_group_normalised_by_hand():
    # group 1: rewards [1, 0, 0, 1]: mean 0.5, unbiased std = sqrt(4 * 0.25 / 3) = 0.57735
    #          advantages = ±0.5 / 0.57735 = ±0.866025
    # group 2: [1, 1, 1, 1]: all equal -> 0, counted as a zero-std group
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv, zero = group_advantages(rewards, 4, eps=0.0)
    expected = torch.tensor([0.866025, -0.866025, -0.866025, 0.866025, 0, 0, 0, 0])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert zero.item() == 0.5


def test_without_std_scaling_is_centred_only():
    # [1, 0, 0]: mean 1/3 -> [2/3, -1/3, -1/3]
    adv, zero = group_advantages(torch.tensor([1.0, 0.0, 0.0]), 3, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3]))
    assert zero.item() == 0.0


def test_eps_keeps_the_division_finite_and_groups_are_separate():
    adv, _ = group_advantages(torch.tensor([0.0, 0.0, 5.0, 5.0]), 2)
    assert torch.equal(adv, torch.zeros(4))


def test_rejects_ragged_groups():
    import pytest

    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)
