"""The RLVR training loop: rollout, reward, advantage, update, log, checkpoint.

Where this departs from the textbook algorithm:
- A "step" is one rollout batch (``trainer.prompts_per_step`` prompts x ``rollout.group_size``
  responses) followed by ``trainer.num_minibatches`` optimizer steps on it; ``metrics.jsonl``
  has one row per step (with the default single minibatch, one row per optimizer step).
- Old log-probs are recomputed by the training forward, not taken from ``generate``; the
  gap between the two is logged as ``rollout/logprob_diff_*`` (see ``rlvr.update``).
- Prompts are drawn without replacement in a seeded order reshuffled each epoch.
"""

from __future__ import annotations

import logging
import math
import os
import time

import torch

from rlvr.advantages import group_advantages
from rlvr.checkpoint import save_checkpoint
from rlvr.config import Config, save_config
from rlvr.data import EpochSampler, load_examples
from rlvr.models import load_model, load_processor, save_processor, stop_token_ids, vision_tower
from rlvr.rollout import encode_prompt, generate
from rlvr.tracking import Tracker
from rlvr.update import PolicyUpdate

logger = logging.getLogger(__name__)


def lr_lambda(cfg: Config, total_steps: int):
    t = cfg.trainer

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        if t.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def reward_columns(examples) -> dict[str, list]:
    """Per-response columns passed to reward functions: id, source, question, and shared extra keys."""
    columns = {"id": [e.id for e in examples], "source": [e.source for e in examples],
               "question": [e.question for e in examples]}
    shared = set.intersection(*(set(e.columns) for e in examples)) if examples else set()
    for key in sorted(shared - set(columns)):
        columns[key] = [e.columns[key] for e in examples]
    return columns


class Trainer:
    def __init__(self, cfg: Config):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from rlvr.rewards import RewardComposer, configure_default_verifier

        self.cfg = cfg
        t = cfg.trainer
        if os.path.exists(os.path.join(cfg.output_dir, "metrics.jsonl")):
            # Never append to, or overwrite, another run's metrics and checkpoints.
            raise FileExistsError(f"output_dir {cfg.output_dir} already holds a run (metrics.jsonl); "
                                  "choose a new output_dir")
        local_seqs = cfg.trainer.prompts_per_step * cfg.rollout.group_size
        self.accelerator = acc = Accelerator(
            gradient_accumulation_steps=local_seqs // t.num_minibatches // t.micro_batch_size,
            mixed_precision="bf16" if cfg.model.dtype == "auto" and torch.cuda.is_available()
            and torch.cuda.is_bf16_supported() else "no",
        )
        if t.prompts_per_step % acc.num_processes:
            raise ValueError(f"trainer.prompts_per_step={t.prompts_per_step} must divide among "
                             f"{acc.num_processes} processes; use a multiple of {acc.num_processes}")
        set_seed(t.seed, device_specific=True)
        if acc.is_main_process:
            os.makedirs(cfg.output_dir, exist_ok=True)
            save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))

        self.processor = load_processor(cfg.model.name_or_path, cfg.data.min_pixels, cfg.data.max_pixels)
        self.examples, self.skips = load_examples(cfg.data.train_files, cfg.data, self.processor)
        logger.info("train data: %s", self.skips.summary())
        self.sampler = EpochSampler(len(self.examples), t.seed, cfg.data.shuffle)

        configure_default_verifier(answer_extraction=cfg.reward.answer_extraction, rel_tol=cfg.reward.rel_tol,
                                   timeout_s=cfg.reward.timeout_s, num_workers=cfg.reward.num_workers)
        self.reward_fn = RewardComposer([(f.name, f.weight) for f in cfg.reward.functions])

        model = load_model(cfg.model.name_or_path, "float32" if cfg.model.dtype == "auto" else cfg.model.dtype,
                           cfg.model.attn_implementation, cfg.model.trust_remote_code)
        if cfg.model.freeze_vision_tower:
            vision_tower(model).requires_grad_(False)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.stop_ids = stop_token_ids(self.processor, model)
        self.pad_id = self.processor.tokenizer.pad_token_id
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps,
                                      weight_decay=t.weight_decay)
        total_optim_steps = t.max_steps * t.num_minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_optim_steps))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(self.scheduler)

        ref_model = None
        if cfg.algorithm.kl_coef > 0:  # a frozen copy of the initial policy; not loaded when unused
            ref_model = load_model(cfg.model.name_or_path, "float32" if cfg.model.dtype == "auto" else cfg.model.dtype,
                                   cfg.model.attn_implementation, cfg.model.trust_remote_code)
            ref_model = ref_model.requires_grad_(False).eval().to(acc.device)
        self.update = PolicyUpdate(cfg, acc, self.model, self.optimizer, self.scheduler, self.pad_id, ref_model)
        self.start_step = 0

    # ------------------------------------------------------------------ one step

    def _local_prompts(self) -> list:
        indices = self.sampler.take(self.cfg.trainer.prompts_per_step)  # the same on every rank
        acc = self.accelerator
        return [self.examples[i] for i in indices[acc.process_index::acc.num_processes]]

    def step(self, step: int) -> dict[str, float]:
        cfg, acc = self.cfg, self.accelerator
        t0 = time.perf_counter()
        examples = self._local_prompts()
        prompts = [encode_prompt(e, self.processor, cfg.data) for e in examples]
        torch.manual_seed(cfg.trainer.seed * 1_000_003 + step * 101 + acc.process_index)
        policy = acc.unwrap_model(self.model).eval()
        responses = generate(policy, prompts, cfg.rollout, self.stop_ids, self.pad_id)
        texts = self.processor.tokenizer.batch_decode([r.token_ids for r in responses], skip_special_tokens=True)
        t1 = time.perf_counter()

        per_response = [examples[r.prompt_index] for r in responses]
        rewards, reward_metrics = self.reward_fn(texts, [e.answer for e in per_response], **reward_columns(per_response))
        rewards = torch.tensor(rewards, dtype=torch.float32)
        advantages, zero_std = group_advantages(rewards, cfg.rollout.group_size,
                                                scale_by_std=cfg.algorithm.scale_by_std, eps=cfg.algorithm.adv_eps)
        t2 = time.perf_counter()

        metrics = self.update.run([prompts[r.prompt_index] for r in responses], responses, advantages, step)
        t3 = time.perf_counter()

        lengths = torch.tensor([len(r.token_ids) for r in responses], dtype=torch.float32)
        metrics.update(reward_metrics)
        metrics.update({
            "reward/mean": rewards.mean().item(),
            "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0,
            "advantage/abs_mean": advantages.abs().mean().item(),
            "zero_std_groups": zero_std.item(),
            "response_length/mean": lengths.mean().item(),
            "response_length/max": lengths.max().item(),
            "response_length/truncated": sum(not r.finished for r in responses) / len(responses),
            "time/rollout_s": t1 - t0,
            "time/reward_s": t2 - t1,
            "time/update_s": t3 - t2,
        })
        metrics = self._reduce(metrics)
        metrics["time/step_s"] = time.perf_counter() - t0
        metrics["step"] = step + 1
        metrics["epoch"] = self.sampler.epoch
        return metrics

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average (or max, for */max) each metric over ranks; one collective for all of them."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([[metrics[k] for k in keys]], dtype=torch.float64, device=acc.device)  # [1, K]
        gathered = acc.gather(values)  # [W, K]
        means, maxes = gathered.mean(0), gathered.max(0).values
        return {k: (maxes[i] if k.endswith("/max") else means[i]).item() for i, k in enumerate(keys)}

    # ------------------------------------------------------------------ loop

    def trainer_state(self, step: int, tracker: Tracker) -> dict:
        return {"step": step, "sampler": self.sampler.state_dict(), "wandb_id": tracker.wandb_id}

    def train(self) -> dict[str, float]:
        cfg, acc = self.cfg, self.accelerator
        tracker = Tracker(cfg, acc.is_main_process, cfg.trainer.max_steps, self.start_step)
        metrics: dict[str, float] = {}
        try:
            for step in range(self.start_step, cfg.trainer.max_steps):
                metrics = self.step(step)
                tracker.log(metrics)
                every = cfg.checkpoint.every_steps
                if every and (step + 1) % every == 0 and step + 1 < cfg.trainer.max_steps:
                    save_checkpoint(acc, cfg.output_dir, step + 1, self.trainer_state(step + 1, tracker),
                                    cfg.checkpoint.keep_last)
            save_checkpoint(acc, cfg.output_dir, cfg.trainer.max_steps,
                            self.trainer_state(cfg.trainer.max_steps, tracker), cfg.checkpoint.keep_last)
            if cfg.checkpoint.save_final_model:
                self.save_model(os.path.join(cfg.output_dir, "final"))
        finally:
            tracker.close()
        return metrics

    def save_model(self, out_dir: str) -> None:
        acc = self.accelerator
        state = acc.get_state_dict(self.model)  # collective under ZeRO-3
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(out_dir, state_dict=state, safe_serialization=True)
            save_processor(self.processor, out_dir)
        acc.wait_for_everyone()
