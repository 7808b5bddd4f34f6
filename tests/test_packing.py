"""Token-budget micro-batches: the packing rules (that packing never changes the update is in test_update.py)."""

import random

import pytest
import torch

from rlvr.packing import SampleCosts, micro_batch_cost, pack_by_tokens, sample_costs, split_to_count
from rlvr.batch import PromptInputs, Response

# ---------------------------------------------------------------- the pure functions

# Five samples, each its own prompt; sample 1 has the longest sequence, samples 1 and 3 have images.
COSTS = SampleCosts(lengths=[3, 9, 5, 5, 2], patches=[0, 4, 0, 10, 0], images=[0, 1, 2, 3, 4])


def _costs(lengths, patches=None, images=None) -> SampleCosts:
    n = len(lengths)
    return SampleCosts(list(lengths), list(patches or [0] * n), list(images or range(n)))


def test_sample_costs_count_prompt_response_and_every_image_patch():
    image = PromptInputs(torch.arange(7), torch.zeros(7, dtype=torch.long), torch.zeros(28, 4),
                         torch.tensor([[1, 4, 6], [1, 2, 2]]))  # two images: 24 + 4 patches
    text = PromptInputs(torch.arange(5), torch.zeros(5, dtype=torch.long), None, None)
    responses = [Response(0, torch.arange(n), torch.zeros(n), True) for n in (3, 1, 2)]
    # Samples 0 and 2 answer the same prompt object: they share its images.
    assert sample_costs([image, text, image], responses) == SampleCosts([7 + 3, 5 + 1, 7 + 2], [28, 0, 28], [0, 1, 0],
                                                                        [0, 0, 0])


def test_a_tool_trajectorys_own_images_count_with_it_not_with_its_prompt():
    image = PromptInputs(torch.arange(7), torch.zeros(7, dtype=torch.long), torch.zeros(24, 4),
                         torch.tensor([[1, 4, 6]]))  # 24 patches
    plain = Response(0, torch.arange(3), torch.zeros(3), True)
    observed = Response(0, torch.arange(9), torch.zeros(9), True, image_grid_thw=torch.tensor([[1, 2, 4], [1, 2, 2]]))
    costs = sample_costs([image, image], [plain, observed])
    assert costs.own_patches == [0, 8 + 4]
    # rows 2 x longest (7 + 9), the prompt's 24 patches once, the observation's 12 with its sample
    assert micro_batch_cost([0, 1], costs) == 2 * 16 + 24 + 12


def test_micro_batch_cost_is_rows_times_longest_plus_each_prompts_patches_once():
    assert micro_batch_cost([1], COSTS) == 9 + 4
    assert micro_batch_cost([0, 4], COSTS) == 2 * 3 + 0
    assert micro_batch_cost([0, 1, 3], COSTS) == 3 * 9 + 4 + 10
    assert micro_batch_cost([], COSTS) == 0
    shared = _costs([9, 7, 5], [10, 10, 0], [0, 0, 2])  # samples 0 and 1: one prompt, one image
    assert micro_batch_cost([0, 1, 2], shared) == 3 * 9 + 10


def test_pack_longest_first_greedy_within_budget():
    # Longest first: 1 (9), 2 (5), 3 (5, after 2: ties keep their order), 0 (3), 4 (2).
    # [1] = 13; + 2 would be 2 * 9 + 4 = 22 > 20. [2, 3] = 2 * 5 + 10 = 20, exactly the budget;
    # + 0 would be 25. [0, 4] = 2 * 3 = 6.
    micro, over = pack_by_tokens([0, 1, 2, 3, 4], COSTS, budget=20)
    assert micro == [[1], [2, 3], [0, 4]] and over == 0
    # The order in the minibatch decides ties only.
    assert pack_by_tokens([4, 3, 2, 1, 0], COSTS, budget=20)[0] == [[1], [3, 2], [0, 4]]
    # A subset (one minibatch) is packed on its own.
    assert pack_by_tokens([3, 0], COSTS, budget=20) == ([[3, 0]], 0)
    # Everything fits: one micro-batch.
    assert pack_by_tokens([0, 1, 2, 3, 4], COSTS, budget=5 * 9 + 14) == ([[1, 2, 3, 0, 4]], 0)
    # A second sample of a prompt adds its row, not its images again: 2 * 8 + 10 = 26.
    assert pack_by_tokens([0, 1], _costs([8, 8], [10, 10], [0, 0]), budget=26)[0] == [[0, 1]]
    assert pack_by_tokens([0, 1], _costs([8, 8], [10, 10], [0, 1]), budget=26)[0] == [[0], [1]]


def test_a_sample_over_budget_runs_alone_and_is_counted():
    micro, over = pack_by_tokens([0, 1, 2], _costs([30, 4, 4]), budget=10)
    assert micro == [[0], [1, 2]] and over == 1
    micro, over = pack_by_tokens([0, 1, 2, 3, 4], COSTS, budget=1)
    assert micro == [[1], [2], [3], [0], [4]] and over == 5
    with pytest.raises(ValueError, match="budget must be >= 1"):
        pack_by_tokens([0], COSTS, budget=0)


def test_split_to_count_splits_the_costliest_until_the_count_matches():
    micro = [[1], [2, 3], [0, 4]]  # costs 13, 20, 6
    assert split_to_count(micro, 3, COSTS) == micro
    assert split_to_count(micro, 4, COSTS) == [[1], [2], [3], [0, 4]]
    # Now [3] (15) is the costliest but cannot be split: [0, 4] is.
    assert split_to_count(micro, 5, COSTS) == [[1], [2], [3], [0], [4]]
    # The cut makes the larger half as cheap as possible: [9, 8] then [1, 1, 1, 1] (cost 4 * 9 = 36
    # vs 2 * 9 + 4 * 8 = 50 for an even split).
    assert split_to_count([[0, 1, 2, 3, 4, 5]], 2, _costs([9, 8, 1, 1, 1, 1])) == [[0, 1], [2, 3, 4, 5]]
    for bad in (2, 6):
        with pytest.raises(ValueError, match="must be between 3 and 5"):
            split_to_count(micro, bad, COSTS)


def test_packing_keeps_every_sample_once_and_the_budget_on_random_batches():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 24)
        group = rng.choice([1, 2, 4])  # samples per prompt, adjacent like a rollout batch
        images = [i - i % group for i in range(n)]
        patches = [0] * n
        for i in range(n):
            patches[i] = patches[images[i]] if images[i] != i else rng.choice([0, 0, 64, 256, 1024])
        costs = SampleCosts([rng.randint(1, 300) for _ in range(n)], patches, images)
        budget = rng.randint(50, 4000)
        indices = rng.sample(range(n), n)
        micro, over = pack_by_tokens(indices, costs, budget)
        assert sorted(i for m in micro for i in m) == list(range(n))
        assert all(micro_batch_cost(m, costs) <= budget for m in micro if len(m) > 1)
        assert over == sum(len(m) == 1 and micro_batch_cost(m, costs) > budget for m in micro)
        flat = [i for m in micro for i in m]
        assert [costs.lengths[i] for i in flat] == sorted((costs.lengths[i] for i in flat), reverse=True)
        count = rng.randint(len(micro), n)
        split = split_to_count(micro, count, costs)
        assert len(split) == count and all(split) and [i for m in split for i in m] == flat
