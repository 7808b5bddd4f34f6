"""The policy update: rollout samples -> ``num_minibatches`` optimizer steps, each accumulated over micro-batches.

Reduction is exact under accumulation and data parallelism: every micro-batch's loss is
divided by the minibatch-wide number of sequences (or tokens, for ``token-mean``) rather
than its own, so the micro-batch losses sum to the loss of the whole minibatch. Across
ranks, gradients are averaged, so those counts are the global ones divided by the world size.

Old log-probs: with one minibatch the single update happens at the rollout weights, so
``old_logprobs = logprobs.detach()`` gives the same values and saves a forward pass; with
several minibatches they are computed once, before the first optimizer step.

Rollout correction (``algorithm.rollout_correction``, ``rlvr.correction``): each token's loss
term is multiplied by a detached importance weight from pi_old (the old log-probs above) and
the log-probs the engine recorded while sampling; ``auto`` resolves to ``token_truncate``
with ``rollout.engine=vllm`` and to ``off`` (no weights, the loss unchanged) with ``hf``.

The model accelerate prepares is ``PolicyLogprobs``: the policy behind a forward that
returns response log-probs. Every training forward goes through accelerate's wrapper
(DDP's gradient synchronisation, DeepSpeed's engine) rather than around it.

Supervised fine-tuning (``algorithm.loss=sft``, ``rlvr.sft``): the samples are given
trajectories, not sampled ones, so their log-probs are taken at temperature 1 (the data's
likelihood, not the sampler's), and there is no sampler to correct for: no rollout correction,
no ``rollout/logprob_diff_*`` metrics.

Micro-batches: ``trainer.micro_batch_size`` sequences each, or, with
``trainer.micro_batch_tokens``, as many as fit a budget of text plus vision tokens
(``rlvr.packing``). Their number may then differ between minibatches and ranks; ranks agree
on the largest, and each minibatch sets accelerate's accumulation steps to its own count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlvr.batch import PromptInputs, Response, collate_sequences
from rlvr.config import Config
from rlvr.correction import importance_weights, resolve_mode
from rlvr.distributed import is_deepspeed, max_over_ranks, reduce_over_ranks, world_size
from rlvr.logprobs import response_logprobs
from rlvr.lora import reference_context
from rlvr.losses import POLICY_LOSSES, default_aggregation, loss_hyperparameters
from rlvr.packing import pack_by_tokens, sample_costs, split_to_count
from rlvr.step_metrics import StepMetrics


def loss_kwargs(cfg: Config) -> dict:
    """The chosen loss's hyperparameters, taken from ``algorithm.*`` (None = the loss's own default)."""
    a = cfg.algorithm
    kwargs = {name: getattr(a, name) for name in loss_hyperparameters(a.loss) if getattr(a, name) is not None}
    kwargs["aggregation"] = a.aggregation or default_aggregation(a.loss)
    if kwargs["aggregation"] == "seq-mean-token-sum-norm":
        kwargs["norm_len"] = cfg.rollout.max_new_tokens  # Dr.GRPO: a constant, the generation budget
    kwargs["kl_coef"] = a.kl_coef
    kwargs["entropy_coef"] = a.entropy_coef
    return kwargs


# Loss metrics aggregated with the minibatch-wide divisor (``rlvr.losses.aggregate`` with
# global counts): micro-batch values add up to the minibatch value instead of averaging to it.
PARTIAL_SUM_METRICS = {"kl"}


def _pad(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out  # [B, width]


class PolicyUpdate:
    """``model``: the prepared ``PolicyLogprobs``. ``ref_model``: the frozen reference for the KL
    penalty (a transformers model, or a DeepSpeed engine around one under ZeRO-3), or the string
    "adapter-off" (LoRA: the policy itself with its adapters disabled)."""

    def __init__(self, cfg: Config, accelerator, model, optimizer, scheduler, pad_id: int, ref_model=None):
        self.cfg, self.accelerator, self.model = cfg, accelerator, model
        self.optimizer, self.scheduler, self.pad_id, self.ref_model = optimizer, scheduler, pad_id, ref_model
        self.loss_fn = POLICY_LOSSES[cfg.algorithm.loss]
        self.loss_kwargs = loss_kwargs(cfg)
        self.sft = cfg.algorithm.loss == "sft"  # given trajectories (module docstring)
        self.temperature = 1.0 if self.sft else cfg.rollout.temperature
        self.correction = "off" if self.sft else resolve_mode(cfg.algorithm.rollout_correction.mode, cfg.rollout.engine)

    def _batch(self, prompts: list[PromptInputs], responses: list[Response], idx: list[int]) -> dict:
        batch = collate_sequences([prompts[i] for i in idx], [responses[i] for i in idx], self.pad_id)
        device = self.accelerator.device
        return {k: v.to(device) for k, v in batch.items() if v is not None}

    def _logprobs(self, model, batch: dict, with_entropy: bool = False):
        kwargs = dict(temperature=self.temperature, chunk_size=self.cfg.trainer.logprob_chunk_size,
                      with_entropy=with_entropy, share_prompts=self.cfg.trainer.shared_prompt_forward)
        if model is self.model:
            return model(batch, **kwargs)
        return response_logprobs(model, batch, **kwargs)

    @torch.no_grad()
    def _precompute(self, model, prompts, responses, micro) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [None] * len(responses)  # type: ignore[list-item]
        for idx in micro:
            lp, _ = self._logprobs(model, self._batch(prompts, responses, idx))
            for row, i in enumerate(idx):
                out[i] = lp[row, :len(responses[i].token_ids)].float().cpu()
        return out

    def _reference(self, prompts, responses, micro) -> list[torch.Tensor] | None:
        if self.ref_model is None:
            return None
        if isinstance(self.ref_model, str):  # "adapter-off"
            with reference_context(self.accelerator.unwrap_model(self.model).policy):
                return self._precompute(self.model, prompts, responses, micro)
        return self._precompute(self.ref_model, prompts, responses, micro)

    def _fill_missing_grads(self) -> None:
        """Give every trainable parameter a gradient (zeros where none flowed) before the step.

        AdamW skips a parameter whose grad is None, but still moves one whose grad is zero
        (its momentum). Under data parallelism or DeepSpeed every parameter always has a
        gradient (in multi-process runs the vision tower even runs on text-only batches), so
        a single process must do the same, or a text-only batch would update the vision
        tower differently with one process than with several.
        """
        if is_deepspeed(self.accelerator):
            return  # DeepSpeed keeps its own flat gradient buffers
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)

    def _global(self, local: float) -> float:
        """Global count / world size: the divisor that makes rank-averaged gradients exact."""
        t = torch.tensor(float(local), dtype=torch.float64, device=self.accelerator.device)
        return reduce_over_ranks(t, "sum").item() / world_size()

    def _micro_batches(self, prompts: list[PromptInputs], responses: list[Response],
                       minibatches: list[list[int]]) -> tuple[list[list[list[int]]], dict[str, float]]:
        """Each minibatch's micro-batches (lists of sample indices), and the packing metrics.

        Every rank gets the same number of micro-batches per minibatch: DDP's gradient
        reduction and DeepSpeed's ZeRO collectives run once per backward (ZeRO-3: per
        forward), so a rank with one pass fewer would leave the others waiting forever.
        """
        t = self.cfg.trainer
        if t.micro_batch_tokens is None:  # the same count on every rank by construction
            size = t.micro_batch_size
            # A group's samples side by side, so they share micro-batches and the training
            # forward computes their prompt once (rlvr.logprobs); the gradient does not change.
            first: dict[int, int] = {}
            minibatches = [sorted(mb, key=lambda i: first.setdefault(id(prompts[i]), i)) for mb in minibatches]
            return [[mb[i:i + size] for i in range(0, len(mb), size)] for mb in minibatches], {}
        costs = sample_costs(prompts, responses)
        packed, over = zip(*(pack_by_tokens(mb, costs, t.micro_batch_tokens) for mb in minibatches))
        counts = max_over_ranks(self.accelerator, [len(m) for m in packed])
        micro = [split_to_count(m, k, costs) for m, k in zip(packed, counts)]
        return micro, {
            "batch/micro_batches": sum(counts) / len(counts),  # per optimizer step, the same on every rank
            # Splits made only to match a rank that packed more: the ranks' loads differ.
            "batch/rank_splits": sum(k - len(m) for m, k in zip(packed, counts)) / len(counts),
            # Share of the sequences over the budget by themselves (each ran alone); a share, not
            # a count, so the mean over ranks is the share of the whole step.
            "batch/over_budget": sum(over) / len(responses),
        }

    def _backward(self, loss: torch.Tensor) -> None:
        """Backward of a micro-batch loss that is already divided by minibatch-wide counts.

        accelerate divides by its ``gradient_accumulation_steps`` (the current minibatch's
        micro-batch count), so the loss is multiplied by it first. Under DeepSpeed accelerate
        leaves the loss alone and the engine would divide by the accumulation steps in its
        config, which is fixed at ``prepare`` while the count varies: ``scale_wrt_gas=False``
        turns that division off.
        """
        acc = self.accelerator
        if is_deepspeed(acc):
            acc.backward(loss, scale_wrt_gas=False)
        else:
            acc.backward(loss * acc.gradient_accumulation_steps)

    def run(self, prompts: list[PromptInputs], responses: list[Response], advantages: torch.Tensor,
            step: int) -> dict[str, float]:
        """Update the policy on one rollout batch; returns step metrics (floats, ``rlvr.step_metrics``).

        ``prompts[i]`` is the prompt of ``responses[i]``. Per-sample results (old and reference
        log-probs) are stored by sample index, so any grouping into micro-batches gives them back
        in the original order.
        """
        cfg = self.cfg.trainer
        n = len(responses)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + step)).tolist()
        mb_size = n // cfg.num_minibatches
        minibatches = [order[i:i + mb_size] for i in range(0, n, mb_size)]
        micro_per_mb, packing_metrics = self._micro_batches(prompts, responses, minibatches)
        all_micro = [m for micro in micro_per_mb for m in micro]

        self.model.train()
        several = cfg.num_minibatches > 1 and not self.sft  # SFT reads no old log-probs
        old = self._precompute(self.model, prompts, responses, all_micro) if several else None
        ref = self._reference(prompts, responses, all_micro)
        stats = StepMetrics(self.accelerator.device)
        for mb, micro in zip(minibatches, micro_per_mb):
            samples = _Samples(prompts, responses, advantages, old, ref)
            self._minibatch_step(mb, micro, samples, stats, share=1 / len(minibatches))
        return {**stats.result(self.accelerator.num_processes), **packing_metrics}

    def _minibatch_step(self, minibatch: list[int], micro: list[list[int]], samples: "_Samples",
                        stats: StepMetrics, share: float) -> None:
        """One optimizer step: the loss of ``minibatch`` accumulated over its micro-batches ``micro``."""
        acc = self.accelerator
        seqs = self._global(len(minibatch))
        tokens = self._global(sum(samples.responses[i].trained_tokens for i in minibatch))
        _count_micro_batches(acc, len(micro))
        for idx in micro:
            with acc.accumulate(self.model):
                loss = self._micro_batch_loss(idx, samples, seqs, tokens, stats, share)
                self._backward(loss)
                if acc.sync_gradients:  # the minibatch's last micro-batch
                    self._optimizer_step(stats, share)

    def _micro_batch_loss(self, idx: list[int], samples: "_Samples", seqs: float, tokens: float,
                          stats: StepMetrics, share: float) -> torch.Tensor:
        """Forward and loss of one micro-batch (already divided by the minibatch-wide counts), with its metrics."""
        batch = self._batch(samples.prompts, samples.responses, idx)
        mask = batch["response_mask"]  # [b, R]
        logprobs, entropy = self._logprobs(self.model, batch, with_entropy=True)  # [b, R]
        width, device = mask.shape[1], mask.device
        old = logprobs.detach() if samples.old is None else _pad([samples.old[i] for i in idx], width).to(device)
        ref = None if samples.ref is None else _pad([samples.ref[i] for i in idx], width).to(device)
        weights = None if self.sft else self._sampler_gap(old.float(), [samples.responses[i] for i in idx], mask, stats)
        loss, metrics = self.loss_fn(
            logprobs.float(), old.float(), samples.advantages[idx].to(device), mask,
            ref_logprobs=ref, entropy=entropy, global_seqs=seqs, global_tokens=tokens,
            is_weights=weights, **self.loss_kwargs,
        )
        stats.add("loss", loss * share)  # micro losses sum to the minibatch loss
        stats.add_loss_metrics(metrics, PARTIAL_SUM_METRICS, share)
        return loss

    def _sampler_gap(self, old: torch.Tensor, responses: list[Response], mask: torch.Tensor,
                     stats: StepMetrics) -> torch.Tensor | None:
        """How far the sampler's recorded log-probs are from the old policy's (``rlvr.rollout.sampling``),
        added to ``stats``; the rollout correction's weights (None when off)."""
        recorded = _pad([r.logprobs for r in responses], mask.shape[1]).to(mask.device)  # [b, R]
        diff = (old - recorded).abs() * mask  # [b, R]
        stats.add_token_sum("rollout/logprob_diff_mean", diff.sum(), mask.sum())
        stats.add_token_sum("rollout/logprob_diff_frac_1e-3", ((diff > 1e-3) & mask.bool()).sum(), mask.sum())
        stats.add_max("rollout/logprob_diff_max", diff.max())
        return self._importance_weights(old, recorded, mask, stats)

    def _importance_weights(self, old: torch.Tensor, recorded: torch.Tensor, mask: torch.Tensor,
                            stats: StepMetrics) -> torch.Tensor | None:
        """The rollout correction's ``[b, R]`` weights (None when off), its metrics added to ``stats``."""
        if self.correction == "off":
            return None
        rc = self.cfg.algorithm.rollout_correction
        weights, metrics = importance_weights(old, recorded, mask, mode=self.correction, cap=rc.cap,
                                              mask_low=rc.mask_low, mask_high=rc.mask_high)
        stats.add_max("rollout_is/weight_max", metrics.pop("rollout_is/weight_max"))
        stats.add_loss_metrics(metrics, set(), share=1.0)  # token means only
        return weights

    def _optimizer_step(self, stats: StepMetrics, share: float) -> None:
        self._fill_missing_grads()
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.max_grad_norm)
        stats.add("grad_norm", grad_norm * share)
        stats.set("lr", self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


@dataclass
class _Samples:
    """A rollout batch as the update reads it, by sample index."""

    prompts: list[PromptInputs]
    responses: list[Response]
    advantages: torch.Tensor  # [N]
    old: list[torch.Tensor] | None  # old-policy log-probs per sample (several minibatches), else None
    ref: list[torch.Tensor] | None  # reference log-probs per sample (KL penalty), else None


def _count_micro_batches(accelerator, count: int) -> None:
    """Make accelerate's ``sync_gradients`` turn true on exactly the ``count``-th micro-batch from now.

    accelerate counts micro-batches in ``accelerator.step`` across the whole run and syncs
    when it reaches a multiple of ``gradient_accumulation_steps``. Under a token budget the
    count differs between minibatches, so each minibatch restarts that count (DDP's
    all-reduce and DeepSpeed's accumulation boundary both follow ``sync_gradients``).
    """
    accelerator.gradient_accumulation_steps = count
    accelerator.step = 0
