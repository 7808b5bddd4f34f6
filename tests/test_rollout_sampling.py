"""Per-response seeded sampling: the same tokens whatever the batch or rank, from the right distribution."""

import math

import pytest
import torch

from rlvr.config import DataConfig, RolloutConfig
from rlvr.batch import encode_prompt
from rlvr.rollout import SeededSampling, generate, mix_seed, response_seeds, uniform_noise
from rlvr.rollout.sampling import inverse_cdf, uniform_from_bits


def test_mix_seed_is_stable_and_spreads():
    assert mix_seed(42, 0, 7) == mix_seed(42, 0, 7)
    assert len({mix_seed(42, s, i) for s in range(20) for i in range(20)}) == 400
    assert 0 <= mix_seed(1, 2, 3) < 2**63
    assert mix_seed(42, 0, 7) == 8938539986109426535  # the same on every machine and Python version


def _draws(logits: torch.Tensor, n: int, position: int = 0, **kw) -> torch.Tensor:
    sampler = SeededSampling([mix_seed(7, i) for i in range(n)], **kw)
    sampler.position = position
    return sampler(None, logits.expand(n, -1)).argmax(-1)  # [n]


# Expected distributions worked out by hand (softmax of the scaled logits over the kept tokens):
LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]
EXPECTED = {
    "plain": ({}, [0.5609, 0.2063, 0.1252, 0.0759, 0.0279, 0.0038]),
    "T=0.7": ({"temperature": 0.7}, [0.6998, 0.1677, 0.0821, 0.0402, 0.0096, 0.0006]),
    "top_k=3": ({"top_k": 3}, [0.6285, 0.2312, 0.1402, 0, 0, 0]),
    # T=1.3 gives p = .473 .2192 .1492 .1015 ...; mass above token 3 is .8413 > .8: tokens 0-2 kept
    "top_p=0.8,T=1.3": ({"top_p": 0.8, "temperature": 1.3}, [0.5622, 0.2605, 0.1773, 0, 0, 0]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_draws_follow_the_filtered_distribution(name):
    kw, expected = EXPECTED[name]
    expected = torch.tensor(expected)
    n = 20000
    counts = torch.bincount(_draws(torch.tensor([LOGITS]), n, **kw), minlength=6).float() / n
    assert counts[expected == 0].sum() == 0  # filtered tokens never come up
    assert torch.allclose(counts, expected, atol=0.015), (counts, expected)


def test_temperature_is_applied_before_top_p():
    # p = (.5, .3, .2); at T = 0.5, p ~ p^2 = (.658, .237, .105): the first token alone holds
    # .658 >= .6, so top_p = .6 keeps only it. Top-p on the unscaled p would keep tokens 0 and 1.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    draws = _draws(logits, 5000, temperature=0.5, top_p=0.6)
    assert (draws == 0).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = SeededSampling([], top_p=0.8)._filter(scores).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = SeededSampling([], top_p=0.81)._filter(scores).isfinite()
    assert kept.tolist() == [[True, True, True, False]]


def test_each_decode_position_draws_fresh_noise():
    """Two positions of one response are independent draws: P(same token) = sum p^2, not 1."""
    logits = torch.zeros(1, 4)  # uniform over 4 tokens: P(same) = 1/4
    n = 8000
    first, second = _draws(logits, n, position=0), _draws(logits, n, position=1)
    assert abs((first == second).float().mean().item() - 0.25) < 0.03


def test_noise_uses_all_64_bits_of_the_seed():
    """torch's CPU generator keeps the low 32 bits of a seed; the noise must not."""
    low = 12345
    seeds = torch.tensor([low, low + (1 << 32), low + (1 << 40), low + (1 << 62)])
    noise = uniform_noise(seeds, 0)  # [4]
    assert len(set(noise.tolist())) == 4


def _splitmix_reference(x: int) -> int:
    """splitmix64's output function on a Python int, modulo 2**64: the published algorithm, written out."""
    mask = (1 << 64) - 1
    x &= mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_uniform_noise_is_splitmix64_of_seed_and_position():
    golden, mask = 0x9E3779B97F4A7C15, (1 << 64) - 1
    seeds, position = [987654321987654321, 5], 3
    expected = [((_splitmix_reference((_splitmix_reference(s) + (position + 1) * golden) & mask) >> 12) + 0.5) / 2**52
                for s in seeds]
    got = uniform_noise(torch.tensor(seeds), position)
    assert got.dtype == torch.float64 and got.tolist() == expected  # exact: 52 bits fit a double
    assert 0 < got.min() and got.max() < 1


def test_uniforms_stay_strictly_inside_0_1_at_the_extreme_bits():
    """The largest and smallest bit patterns: neither end of (0, 1) is ever reached."""
    extreme = uniform_from_bits(torch.tensor([0, (1 << 52) - 1]))
    assert extreme[0] > 0 and extreme[1] < 1


def test_inverse_cdf_picks_by_interval_and_never_a_token_without_mass():
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.0, 0.2, 0.0]]))  # tokens 2 and 4 outside the distribution
    # cumulative 0.5, 0.8, 0.8, 1.0, 1.0: u in [0, .5) -> 0, [.5, .8) -> 1, [.8, 1) -> 3
    for u, token in ((1e-12, 0), (0.4999, 0), (0.5001, 1), (0.7999, 1), (0.8001, 3), (0.95, 3), (1 - 2**-53, 3)):
        assert inverse_cdf(logp, torch.tensor([u], dtype=torch.float64)).item() == token, u
    # rounding at the top edge (a target equal to the total) still lands on a token with mass
    assert inverse_cdf(logp, torch.tensor([1.0], dtype=torch.float64)).item() == 3


def test_recorded_logprob_is_of_the_distribution_sampled_from():
    """Filtered tokens and tokens already at -inf (suppressed) are outside the normaliser."""
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])).expand(200, -1).clone()
    logits[:, 1] = float("-inf")  # as transformers' suppression leaves a vision token
    sampler = SeededSampling([mix_seed(3, i) for i in range(200)], top_k=2)
    chosen = sampler(None, logits).argmax(-1)  # kept: tokens 0 and 2, p = (.4, .2) / .6
    assert set(chosen.tolist()) == {0, 2}
    expected = torch.where(chosen == 0, torch.tensor(math.log(2 / 3)), torch.tensor(math.log(1 / 3)))
    assert torch.allclose(sampler.logprobs[0], expected, atol=1e-6)


def test_response_seeds_differ_by_step_and_by_position_in_the_step():
    seeds = response_seeds(0, 5, [3, 8, 3])  # row 3 drawn twice in one step (an epoch boundary)
    assert seeds[0] != seeds[2]
    assert response_seeds(0, 6, [3, 8, 3])[0] != seeds[0]  # the next step samples afresh
    assert response_seeds(1, 5, [3, 8, 3])[0] != seeds[0]  # and so does another run seed
    assert response_seeds(0, 5, [3, 8, 3]) == seeds  # reproducible


def test_responses_do_not_depend_on_batch_composition(qwen25_dir, tmp_path):
    """A prompt's G responses are the same generated alone or with others, in any order."""
    from rlvr.data import load_examples
    from rlvr.models import load_model, load_processor, stop_token_ids
    from rlvr.devtools.make_demo_data import main as make_data

    make_data(["--out", str(tmp_path), "--train", "3", "--val", "1"])
    processor = load_processor(qwen25_dir)
    model = load_model(qwen25_dir, "float32").eval()
    examples, _ = load_examples([str(tmp_path / "train.jsonl")], DataConfig(), processor)
    prompts = [encode_prompt(e, processor, DataConfig()) for e in examples]
    cfg = RolloutConfig(group_size=3, max_new_tokens=8, micro_batch_size=4, temperature=1.0)
    stop, pad = stop_token_ids(processor, model), processor.tokenizer.pad_token_id
    seeds = [mix_seed(42, 0, i) for i in range(3)]
    together = generate(model, prompts, cfg, stop, pad, seeds=seeds)
    torch.manual_seed(123)  # the global generator plays no part
    alone = generate(model, prompts[2:], cfg, stop, pad, seeds=seeds[2:])
    reversed_ = generate(model, prompts[::-1], cfg, stop, pad, seeds=seeds[::-1])
    tokens = lambda rs: [r.token_ids.tolist() for r in rs]  # noqa: E731
    assert tokens(alone) == tokens(together)[6:]
    assert tokens(reversed_)[6:] == tokens(together)[:3]
    assert len({tuple(t) for t in tokens(together)}) > 3  # the G samples of a prompt differ
    other = generate(model, prompts, cfg, stop, pad, seeds=[mix_seed(43, 0, i) for i in range(3)])
    assert tokens(other) != tokens(together)
    for r in together:  # recorded log-probs are of the sampling distribution, as before
        assert torch.isfinite(r.logprobs).all() and (r.logprobs <= 0).all()
