"""The policy update: micro-batching never changes it, and its metrics are exact step values.

The loss divides by minibatch-wide counts, so one sample per micro-batch, uneven micro-batches
from a token budget, and a fixed count per micro-batch must give the same loss, the same
gradients and the same weights after the optimizer steps (fp32, up to summation order).
"""

import math
from contextlib import nullcontext
from unittest import mock

import pytest
import torch

from rlvr.batch import Response
from rlvr.config import Config
from rlvr.logprobs import PolicyLogprobs
from rlvr.models import load_model, load_processor
from rlvr.packing import micro_batch_cost, sample_costs
from rlvr.update import PolicyUpdate
from tests.test_logprobs import _prompt

# ---------------------------------------------------------------- the update does not depend on packing


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps the gradient of every step, and accelerate's accumulation counters then."""

    def __init__(self, params, accelerator):
        super().__init__(params, lr=0.05)
        self.accelerator, self.grads, self.counters = accelerator, [], []

    @torch.no_grad()
    def step(self, closure=None):
        self.grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        self.counters.append((self.accelerator.step, self.accelerator.gradient_accumulation_steps))
        return super().step(closure)


@pytest.fixture(scope="module")
def rollout(qwen25_dir):
    """4 prompts x 2 responses: prompts of different lengths with 0, 1 or 2 images, responses of 2 to 9 tokens."""
    processor = load_processor(qwen25_dir)
    prompts = [_prompt(processor, "q" * (1 + 9 * i), [(56 + 28 * (i % 3), 56)] * (i % 3)) for i in range(4)]
    g = torch.Generator().manual_seed(3)
    responses = []
    for i in range(8):
        n = 2 + (5 * i) % 8
        responses.append(Response(i // 2, torch.randint(10, 300, (n,), generator=g),
                                  -torch.rand(n, generator=g), True))
    advantages = torch.randn(8, generator=g)
    return processor, [prompts[r.prompt_index] for r in responses], responses, advantages


def _update(qwen25_dir, rollout, num_minibatches, micro_batch_size=8, micro_batch_tokens=None, agree=None,
            aggregation=None, configure=None):
    """One PolicyUpdate.run from the same weights; returns (metrics, optimizer, micro-batches run, model)."""
    from accelerate import Accelerator

    processor, prompts, responses, advantages = rollout
    cfg = Config()
    cfg.trainer.prompts_per_step, cfg.rollout.group_size = 4, 2
    cfg.trainer.num_minibatches, cfg.trainer.micro_batch_size = num_minibatches, micro_batch_size
    cfg.trainer.micro_batch_tokens, cfg.trainer.logprob_chunk_size = micro_batch_tokens, 4
    cfg.algorithm.kl_coef = 0.05  # the reference's precomputed log-probs must come back in order too
    cfg.algorithm.aggregation = aggregation
    if configure is not None:  # any other setting, e.g. the rollout correction
        configure(cfg)
    acc = Accelerator(cpu=True)
    policy = load_model(qwen25_dir, dtype="float32")
    reference = load_model(qwen25_dir, dtype="float32").requires_grad_(False).eval()
    optimizer = RecordingSGD([p for p in policy.parameters() if p.requires_grad], acc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, prepared = acc.prepare(PolicyLogprobs(policy), optimizer)
    update = PolicyUpdate(cfg, acc, model, prepared, scheduler, processor.tokenizer.pad_token_id, reference)
    seen: list[list[int]] = []
    batch = update._batch
    update._batch = lambda p, r, idx: (seen.append(list(idx)), batch(p, r, idx))[1]
    # agree: the counts another rank that packed more micro-batches would make every rank use
    with mock.patch("rlvr.update.max_over_ranks", lambda acc, counts: agree(counts)) if agree else nullcontext():
        metrics = update.run(prompts, responses, advantages, step=0)
    return metrics, optimizer, seen, policy


TOKEN_METRICS = ("ratio/mean", "ratio/max", "entropy", "sapo/gate_pos", "sapo/gate_neg", "sapo/gate_below_half",
                 "rollout/logprob_diff_mean", "rollout/logprob_diff_max", "rollout/logprob_diff_frac_1e-3")


def _assert_same_update(expected, got):
    (m1, opt1, _, policy1), (m2, opt2, _, policy2) = expected, got
    for key in ("loss", "kl", "grad_norm"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), key
    # Token metrics are token-weighted over the whole step, so micro-batching cannot change them.
    for key in TOKEN_METRICS:
        assert m2[key] == pytest.approx(m1[key], rel=1e-6, abs=1e-9), key
    assert len(opt1.grads) == len(opt2.grads)
    for step, (g1, g2) in enumerate(zip(opt1.grads, opt2.grads)):
        for a, b in zip(g1, g2):
            torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-4, msg=f"optimizer step {step}")
    for (name, a), b in zip(policy1.named_parameters(), policy2.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("num_minibatches", [1, 2])
def test_one_per_micro_batch_token_budget_and_fixed_count_give_the_same_update(qwen25_dir, rollout,
                                                                               num_minibatches):
    _, prompts, responses, _ = rollout
    costs = sample_costs(prompts, responses)
    largest = max(micro_batch_cost([i], costs) for i in range(8))
    per_mb = 8 // num_minibatches

    fixed = _update(qwen25_dir, rollout, num_minibatches, micro_batch_size=per_mb // 2)
    one_each = _update(qwen25_dir, rollout, num_minibatches, micro_batch_tokens=1)  # every sample over budget
    # Room for the largest sample alone, or two small ones: micro-batches of different sizes.
    budget = _update(qwen25_dir, rollout, num_minibatches, micro_batch_tokens=largest)

    forwards = 1 + (num_minibatches > 1)  # reference log-probs, then old log-probs with 2 minibatches
    assert [len(m) for m in one_each[2]] == [1] * 8 * (forwards + 1)
    assert one_each[0]["batch/over_budget"] == 1.0 and one_each[0]["batch/micro_batches"] == per_mb
    training = budget[2][-sum(k for _, k in budget[1].counters):]  # after the precomputing forwards
    assert len({len(m) for m in training}) > 1, f"micro-batches of equal size {training}: pick another budget"
    assert budget[0]["batch/over_budget"] == 0.0
    assert all(micro_batch_cost(m, costs) <= largest for m in training)
    for run in (fixed, one_each, budget):
        # One optimizer step per minibatch, on its last micro-batch: accelerate counted to k.
        assert len(run[1].grads) == num_minibatches
        assert all(step == k for step, k in run[1].counters)
    _assert_same_update(fixed, one_each)
    _assert_same_update(fixed, budget)


def test_extra_splits_to_match_another_rank_change_nothing(qwen25_dir, rollout):
    """A rank that packed fewer micro-batches than another splits its own; the update is the same."""
    _, prompts, responses, _ = rollout
    budget = micro_batch_cost(range(8), sample_costs(prompts, responses))  # everything fits one micro-batch
    alone = _update(qwen25_dir, rollout, 2, micro_batch_tokens=budget)
    assert alone[0]["batch/micro_batches"] == 1 and alone[0]["batch/rank_splits"] == 0
    split = _update(qwen25_dir, rollout, 2, micro_batch_tokens=budget, agree=lambda counts: [3, 4])
    assert split[0]["batch/micro_batches"] == 3.5 and split[0]["batch/rank_splits"] == 2.5
    assert [k for _, k in split[1].counters] == [3, 4]
    training = split[2][-7:]
    assert sum(len(m) for m in training[:3]) == 4 and [len(m) for m in training[3:]] == [1, 1, 1, 1]
    _assert_same_update(alone, split)


def test_token_metrics_are_token_weighted_over_the_step(qwen25_dir, rollout):
    """Micro-batches of 1: the metric is the mean over all response tokens, not a mean of row means."""
    from rlvr.logprobs import response_logprobs
    from rlvr.batch import collate_sequences

    processor, prompts, responses, _ = rollout
    metrics = _update(qwen25_dir, rollout, 1, micro_batch_size=1)[0]
    policy = load_model(qwen25_dir, dtype="float32")
    batch = collate_sequences(prompts, [r.token_ids for r in responses], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, entropy = response_logprobs(policy, batch, with_entropy=True)  # the weights before the step
    mask = batch["response_mask"].bool()
    recorded = torch.zeros_like(logprobs)
    for i, r in enumerate(responses):
        recorded[i, :len(r.logprobs)] = r.logprobs
    diff = (logprobs - recorded).abs()  # [B, R]: the fixture's rollout log-probs are random, so rows differ
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx(diff[mask].mean().item(), rel=1e-6)
    row_means = torch.stack([diff[i][mask[i]].mean() for i in range(len(responses))]).mean().item()
    assert abs(row_means - diff[mask].mean().item()) > 1e-3  # the two readings differ on this batch
    assert metrics["entropy"] == pytest.approx(entropy[mask].mean().item(), rel=1e-5)


def test_gate_weights_are_one_at_ratio_one_and_absent_without_tokens(qwen25_dir, rollout):
    """One minibatch: the ratio is exactly 1, so every SAPO gate weight is f'(1) = 1."""
    processor, prompts, responses, advantages = rollout
    metrics = _update(qwen25_dir, rollout, 1, micro_batch_size=1)[0]
    assert metrics["ratio/mean"] == 1.0 and metrics["ratio/max"] == 1.0
    assert metrics["sapo/gate_pos"] == 1.0 and metrics["sapo/gate_neg"] == 1.0
    assert metrics["sapo/gate_below_half"] == 0.0
    only_positive = (processor, prompts, responses, advantages.abs() + 0.1)  # no A < 0 token anywhere
    metrics = _update(qwen25_dir, only_positive, 1, micro_batch_size=1)[0]
    assert metrics["sapo/gate_pos"] == 1.0 and "sapo/gate_neg" not in metrics


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_one_micro_batch_of_4_equals_4_of_1_with_accumulation(qwen25_dir, rollout, aggregation):
    """Two minibatches of 4: the second runs off-policy (the first step moved the weights), so the gate is not 1."""
    whole = _update(qwen25_dir, rollout, 2, micro_batch_size=4, aggregation=aggregation)
    singles = _update(qwen25_dir, rollout, 2, micro_batch_size=1, aggregation=aggregation)
    assert singles[0]["ratio/max"] != 1.0  # off-policy in the second minibatch
    _assert_same_update(whole, singles)
    names = [n for n, p in whole[3].named_parameters() if p.requires_grad]
    first_step = dict(zip(names, whole[1].grads[0]))
    assert len(first_step) > 10
    assert any(g.abs().sum() > 0 for n, g in first_step.items() if "visual" in n), "the vision tower gets gradients"


# ---------------------------------------------------------------- the rollout correction (rlvr.correction)


def _perturbed(qwen25_dir, rollout):
    """The rollout with recorded log-probs = the policy's - log w: w = 3 on each response's first
    token, 0.5 on its second, 1 elsewhere (8 responses of 2 to 9 tokens)."""
    from rlvr.batch import collate_sequences
    from rlvr.logprobs import response_logprobs

    processor, prompts, responses, advantages = rollout
    policy = load_model(qwen25_dir, dtype="float32")
    batch = collate_sequences(prompts, [r.token_ids for r in responses], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, _ = response_logprobs(policy, batch)  # pi_old: the weights before the step
    perturbed = []
    for i, r in enumerate(responses):
        log_w = torch.zeros(len(r.token_ids))
        log_w[0], log_w[1] = math.log(3.0), math.log(0.5)
        perturbed.append(Response(r.prompt_index, r.token_ids, logprobs[i, :len(r.token_ids)] - log_w, r.finished))
    return processor, prompts, perturbed, advantages


def _vllm(cfg):
    cfg.rollout.engine = "vllm"  # only the correction reads it in the update; auto -> token_truncate


def test_correction_metrics_with_known_perturbed_rollout_log_probs(qwen25_dir, rollout):
    perturbed = _perturbed(qwen25_dir, rollout)
    n = sum(len(r.token_ids) for r in perturbed[2])  # 2 + 7 + 4 + 9 + 6 + 3 + 8 + 5 = 44 tokens
    assert n == 44
    metrics = _update(qwen25_dir, perturbed, 2, micro_batch_size=1, configure=_vllm)[0]
    # token_truncate at cap 2: the 8 tokens of w = 3 weigh 2, the 8 of w = 0.5 weigh 0.5, the rest 1
    assert metrics["rollout_is/weight_mean"] == pytest.approx((8 * 2 + 8 * 0.5 + (n - 16)) / n, rel=1e-5)
    assert metrics["rollout_is/capped_frac"] == pytest.approx(8 / n)
    assert metrics["rollout_is/weight_max"] == pytest.approx(3.0, rel=1e-5)
    # k3 = w - 1 - log w: (3 - 1 - log 3) = 0.901388 and (0.5 - 1 - log 0.5) = 0.193147, 0 elsewhere
    k3 = 8 * (2 - math.log(3.0)) + 8 * (-0.5 + math.log(2.0))
    assert metrics["rollout_is/kl"] == pytest.approx(k3 / n, rel=1e-4)
    assert metrics["rollout_is/nan_frac"] == 0.0
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(math.log(3.0), rel=1e-5)
    # token_mask [0.5, 2]: the w = 3 tokens are dropped (0.5 is on the bound, kept)
    masked = _update(qwen25_dir, perturbed, 2, micro_batch_size=1, configure=lambda cfg: (
        _vllm(cfg), setattr(cfg.algorithm.rollout_correction, "mode", "token_mask")))[0]
    assert masked["rollout_is/masked_frac"] == pytest.approx(8 / n)
    assert masked["rollout_is/weight_mean"] == pytest.approx((8 * 0.5 + (n - 16)) / n, rel=1e-5)
    assert "rollout_is/capped_frac" not in masked


def test_correction_off_and_auto_with_hf_give_identical_updates(qwen25_dir, rollout):
    """The fixture's recorded log-probs are random (-U(0, 1), far above the tiny model's ~-5.7), so
    any weight would change the gradient."""
    def mode(name, engine="hf"):
        return lambda cfg: (setattr(cfg.rollout, "engine", engine),
                            setattr(cfg.algorithm.rollout_correction, "mode", name))

    auto_hf = _update(qwen25_dir, rollout, 2, micro_batch_size=4, configure=mode("auto"))
    off = _update(qwen25_dir, rollout, 2, micro_batch_size=4, configure=mode("off", "vllm"))
    assert not any(k.startswith("rollout_is/") for k in {**auto_hf[0], **off[0]})
    for g1, g2 in zip(auto_hf[1].grads, off[1].grads, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
    assert auto_hf[0]["loss"] == off[0]["loss"]
    # the weights do reach the loss when on: the same rollout with token_truncate moves differently
    on = _update(qwen25_dir, rollout, 2, micro_batch_size=4, configure=mode("token_truncate"))
    assert on[0]["rollout_is/weight_mean"] < 0.1 and on[0]["loss"] != off[0]["loss"]
    assert not torch.allclose(on[1].grads[0][0], off[1].grads[0][0])
