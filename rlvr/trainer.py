"""The RLVR training loop: rollout, reward, advantage, update, log, checkpoint.

Where this departs from the textbook algorithm:
- A "step" is one rollout batch (``trainer.prompts_per_step`` prompts x ``rollout.group_size``
  responses) followed by ``trainer.num_minibatches`` optimizer steps on it; ``metrics.jsonl``
  has one row per step (with the default single minibatch, one row per optimizer step).
- Old log-probs are recomputed by the training forward, not taken from ``generate``; the
  gap between the two is logged as ``rollout/logprob_diff_*`` (see ``rlvr.update``).
- Prompts are drawn without replacement in a seeded order reshuffled each epoch.

Many processes: every rank draws the same global order and takes every world-size-th prompt
of each step's slice, so each prompt is used once per epoch. Each prompt's responses are
sampled from streams seeded by (``trainer.seed``, step, the prompt's row index in the
dataset), so a run's trajectory does not depend on the number of processes. Metrics are
reduced over ranks; files, wandb and the console are written by the main process only.
Retired prompts and DAPO's dynamic sampling (off by default): ``rlvr.difficulty``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time

import torch

from rlvr.advantages import group_advantages
from rlvr.agent.rollout import tool_columns, tool_metrics, with_tools, with_tools_prompt
from rlvr.checkpoint import (ResumeError, ResumePlan, install_hooks, load_checkpoint, plan_resume, resumed_config_name,
                             save_checkpoint, truncate_run_logs)
from rlvr.config import Config, save_config
from rlvr.data import EpochSampler, load_examples
from rlvr.difficulty import DifficultyFilter, Group
from rlvr.evaluate import Evaluator
from rlvr.distributed import (StopSignal, average_over_ranks, configure_deepspeed, describe_ranks, gather_objects,
                              generation_model, make_accelerator, prepare_reference)
from rlvr.lora import apply_lora, inner_model, is_lora
from rlvr.models import load_model, load_processor, stop_token_ids, vision_tower
from rlvr.plot import plot_run
from rlvr.batch import encode_prompt
from rlvr.rollout import make_engine
from rlvr.samples import SampleLogger
from rlvr.schedule import LRSchedule
from rlvr.tracking import Tracker
from rlvr.trained_models import save_trained
from rlvr.logprobs import PolicyLogprobs
from rlvr.update import PolicyUpdate

logger = logging.getLogger(__name__)


def reward_columns(examples) -> dict[str, list]:
    """Per-response columns passed to reward functions: id, source, question, and shared extra keys."""
    columns = {"id": [e.id for e in examples], "source": [e.source for e in examples],
               "question": [e.question for e in examples]}
    shared = set.intersection(*(set(e.columns) for e in examples)) if examples else set()
    for key in sorted(shared - set(columns)):
        columns[key] = [e.columns[key] for e in examples]
    return columns


def micro_batching(cfg: Config, world: int) -> tuple[int, int]:
    """(sequences per micro-batch, micro-batches per optimizer step) on each rank, for DeepSpeed's config.

    Raises if the batch does not split evenly. With ``trainer.micro_batch_tokens`` the count
    varies from minibatch to minibatch, so DeepSpeed is told (1, sequences per minibatch): the
    right number of samples per optimizer step. Nothing depends on the count it holds:
    ``rlvr.update`` sets accelerate's accumulation steps per minibatch and scales the loss itself.
    """
    from rlvr.config import ConfigError, process_problems

    problems = process_problems(cfg, world)  # the rule rlvr.validate --num-processes checks
    if problems:
        raise ConfigError(problems[0])
    t, g = cfg.trainer, cfg.rollout.group_size
    local = t.prompts_per_step // world * g  # sequences per rank per step
    size = 1 if t.micro_batch_tokens is not None else t.micro_batch_size
    return size, local // t.num_minibatches // size


def _hidden_size(name_or_path: str, trust_remote_code: bool) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size


class Trainer:
    def __init__(self, cfg: Config):
        from accelerate.utils import set_seed

        from rlvr.rewards import RewardComposer, verifier_from_config

        self.cfg = cfg
        t, m = cfg.trainer, cfg.model
        # From here on SIGUSR1/SIGTERM mean "checkpoint after the current step and stop".
        self.signals = StopSignal().install()
        mixed = "bf16" if m.dtype == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        self.accelerator = acc = make_accelerator(t.collective_timeout_s, mixed)
        self.resume_plan = plan = self._resume_decision()
        resume_from = plan.checkpoint
        micro, gas = micro_batching(cfg, acc.num_processes)
        acc.gradient_accumulation_steps = gas  # as in the DeepSpeed config; rlvr.update sets it per minibatch
        configure_deepspeed(acc, micro, gas, t.max_grad_norm, _hidden_size(m.name_or_path, m.trust_remote_code))
        set_seed(t.seed, device_specific=True)
        if acc.is_main_process:
            self._save_config(plan)
        logger.info(describe_ranks(acc))
        if cfg.tools.enabled:  # every prompt lists the tools in its system turn (config.yaml keeps the recipe's)
            self.cfg = cfg = with_tools_prompt(cfg)

        self.processor = load_processor(m.name_or_path, cfg.data.min_pixels, cfg.data.max_pixels)
        self.examples, self.skips = load_examples(cfg.data.train_files, cfg.data, self.processor)
        if not self.skips.skipped:  # skips were logged as a warning by load_examples
            logger.info("train data: %s", self.skips.summary())
        self.sampler = EpochSampler(len(self.examples), t.seed, cfg.data.shuffle)
        self.difficulty = DifficultyFilter(t, self.sampler, acc.process_index, acc.num_processes)

        # One verifier (one worker pool per rank) with the run's settings: training reward,
        # evaluation and the samples pages all score with it.
        self.verifier = verifier_from_config(cfg.reward)
        self.reward_fn = RewardComposer([(f.name, f.weight) for f in cfg.reward.functions], self.verifier)
        val = load_examples(cfg.data.val_files, cfg.data, self.processor)[0] if cfg.data.val_files else []
        self.evaluator = Evaluator(cfg, self.processor, val, accelerator=acc,
                                   out_dir=os.path.join(cfg.output_dir, "eval"), verifier=self.verifier)
        # sample pages from step() on; train() adds the wandb run once the tracker has one
        self.samples = SampleLogger(cfg, enabled=acc.is_main_process, verifier=self.verifier)

        policy = self._load_policy()
        self.stop_ids = stop_token_ids(self.processor, policy)
        self.pad_id = self.processor.tokenizer.pad_token_id
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps,
                                      weight_decay=t.weight_decay)
        self.lr_schedule = LRSchedule.from_config(cfg)
        # A plain function, so LambdaLR's checkpoint does not carry the schedule's fields: the
        # trainer state does, and the resumed run's own config decides (see LRSchedule.resume).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: self.lr_schedule(k))
        self.model, self.optimizer = acc.prepare(PolicyLogprobs(policy), optimizer)
        acc.register_for_checkpointing(self.scheduler)
        install_hooks(acc, self.model)

        ref_model = None
        if cfg.algorithm.kl_coef > 0:
            # LoRA: the policy with adapters off is the initial policy. Otherwise a frozen copy.
            ref_model = "adapter-off" if is_lora(policy) else prepare_reference(acc, self._load_base())
        self.update = PolicyUpdate(cfg, acc, self.model, self.optimizer, self.scheduler, self.pad_id, ref_model)
        # The rollout engine (rollout.engine). One that holds its own copy of the weights (vLLM)
        # is sent the policy's before the first rollout (a resumed run's are not the model
        # folder's) and after every update; the HF engine samples from the policy itself.
        # With tools (tools.*), the engine behind the multi-turn loop (rlvr.agent.rollout).
        self.engine = with_tools(make_engine(cfg, self.stop_ids, self.pad_id, policy=self._generation_policy,
                                             accelerator=acc), cfg, self.processor, acc)
        self._engine_stale = True

        self.start_step, self.wandb_id = 0, None
        if resume_from is not None:
            state = load_checkpoint(acc, resume_from)
            self.start_step, self.wandb_id = state["step"], state.get("wandb_id")
            self.sampler.load_state_dict(state["sampler"])
            self.difficulty.load_state_dict(state.get("difficulty"))
            self._continue_lr_schedule(state.get("lr_schedule"), plan)
        if cfg.resume is not None and acc.is_main_process:
            truncate_run_logs(cfg.output_dir, self.start_step)
        acc.wait_for_everyone()

    def _resume_decision(self) -> ResumePlan:
        """The checkpoint to start from and the config changes since: decided once, by the main
        process, before anything is written; changes that alter the run's meaning are refused."""
        from accelerate.utils import broadcast_object_list

        acc, decision = self.accelerator, [None, None]
        if acc.is_main_process:
            try:
                decision[0] = plan_resume(self.cfg)
            except ResumeError as e:
                decision[1] = str(e)
        if acc.num_processes > 1:
            decision = broadcast_object_list(decision)
        if decision[1] is not None:
            raise ResumeError(decision[1])
        plan = decision[0]
        if plan.refused and not plan.allowed:
            raise ResumeError(f"resume={self.cfg.resume} {plan.describe()}")
        return plan

    def _save_config(self, plan: ResumePlan) -> None:
        cfg = self.cfg
        os.makedirs(cfg.output_dir, exist_ok=True)
        if plan.checkpoint is None or plan.compared_with is None:
            save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
        elif plan.changes:  # config.yaml stays the config the run started with
            save_config(cfg, os.path.join(cfg.output_dir, resumed_config_name(plan.step)))
        if plan.checkpoint is not None:
            logger.info("resume=%s %s", cfg.resume, plan.describe())

    def _continue_lr_schedule(self, saved: dict | None, plan: ResumePlan) -> None:
        """Keep the learning rate continuous when the resumed run's length differs (LRSchedule.resume)."""
        t = self.cfg.trainer
        if saved is None and plan.compared_with is not None:  # a checkpoint from before schedules were saved
            from rlvr.config import load_config

            before = load_config(plan.compared_with).trainer
            saved = {"total": before.max_steps * before.num_minibatches, "anchor": None}
        if saved is not None:
            self.lr_schedule.resume(saved, self.start_step * t.num_minibatches)

    def _load_base(self):
        m = self.cfg.model
        return load_model(m.name_or_path, "float32" if m.dtype == "auto" else m.dtype, m.attn_implementation,
                          m.trust_remote_code)

    def _load_policy(self):
        m = self.cfg.model
        model = self._load_base()
        if m.freeze_vision_tower:
            vision_tower(model).requires_grad_(False)
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if m.lora.rank > 0:
            model = apply_lora(model, m.lora)
        count = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731 (full size, also when partitioned)
        trainable = sum(count(p) for p in model.parameters() if p.requires_grad)
        total = sum(count(p) for p in model.parameters())
        logger.info("policy: %.2fM of %.2fM parameters trainable%s", trainable / 1e6, total / 1e6,
                    f" (LoRA rank {m.lora.rank})" if m.lora.rank else "")
        return model

    @contextlib.contextmanager
    def _generation_policy(self):
        """The HF engine's model for one rollout: the policy, gathered under ZeRO-3 (``generation_model``)."""
        with generation_model(self.accelerator, self.model, self.cfg.rollout.zero3_gather_weights) as (module, synced):
            yield inner_model(module.policy), synced

    def _ready_engine(self) -> dict[str, float]:
        """Send the engine the policy's weights if an update changed them, then wake it; the sync's metrics.

        In this order a sleeping vLLM engine takes its weights back before its KV cache, so
        the cache is not held while the new weights stream in.
        """
        report = None
        if self._engine_stale:
            report = self.engine.sync_weights(self.accelerator.unwrap_model(self.model).policy)
            self._engine_stale = False
        self.engine.wake()
        return report.metrics() if report is not None else {}

    # ------------------------------------------------------------------ one step

    def _sample(self, step: int, round_: int, rows: list[int], seeds: list[int]) -> list[Group]:
        """One round of the step on this rank (``rlvr.difficulty``): each row's G responses and rewards."""
        cfg, g = self.cfg, self.cfg.rollout.group_size
        t0, examples = time.perf_counter(), [self.examples[i] for i in rows]
        prompts = [encode_prompt(e, self.processor, cfg.data) for e in examples]
        responses = self.engine.generate(prompts, seeds)
        # The reward reads the model's last turn (all of a single-turn response).
        texts = self.processor.tokenizer.batch_decode([r.answer_ids() for r in responses], skip_special_tokens=True)
        t1 = time.perf_counter()
        per_response = [examples[r.prompt_index] for r in responses]
        columns = reward_columns(per_response) | (tool_columns(responses) if cfg.tools.enabled else {})
        rewards, reward_metrics = self.reward_fn(texts, [e.answer for e in per_response], **columns)
        if round_ == 0:  # the step's own draw: reward metrics and sample pages as without dynamic sampling
            self.samples.log(step + 1, per_response, responses, texts, rewards, tokenizer=self.processor.tokenizer)
            self._reward_metrics = reward_metrics
        self._clock["rollout"] += t1 - t0
        self._clock["reward"] += time.perf_counter() - t1
        return [Group(rewards[k * g:(k + 1) * g], responses[k * g:(k + 1) * g], prompts[k]) for k in range(len(rows))]

    def step(self, step: int) -> tuple[dict[str, float], list[int], list[int]]:
        cfg, acc = self.cfg, self.accelerator
        t0, self._clock = time.perf_counter(), {"rollout": 0.0, "reward": 0.0}
        sync_metrics = self._ready_engine()
        t_sync = time.perf_counter() - t0
        batch = self.difficulty.collect(step, functools.partial(self._sample, step),
                                        functools.partial(gather_objects, acc))
        self.engine.sleep()  # vLLM on GPU: free its memory for the update
        encode = functools.partial(encode_prompt, processor=self.processor, cfg=cfg.data)
        prompts, responses, rewards = batch.update_inputs(lambda i: encode(self.examples[i]))
        advantages, zero_std = group_advantages(torch.tensor(rewards, dtype=torch.float32), cfg.rollout.group_size,
                                                scale_by_std=cfg.algorithm.scale_by_std, eps=cfg.algorithm.adv_eps)
        t2 = time.perf_counter()

        metrics = self.update.run([prompts[r.prompt_index] for r in responses], responses, advantages, step)
        self._engine_stale, t3 = True, time.perf_counter()

        lengths = torch.tensor([len(r.token_ids) for r in responses], dtype=torch.float32)
        metrics.update(self._reward_metrics)
        if cfg.tools.enabled:
            metrics.update(tool_metrics(responses, self.engine.registry.names()))
        metrics.update({
            "advantage/abs_mean": advantages.abs().mean().item(), "zero_std_groups": zero_std.item(),
            "response_length/mean": lengths.mean().item(), "response_length/max": lengths.max().item(),
            "response_length/truncated": sum(not r.finished for r in responses) / len(responses),
            "time/rollout_s": self._clock["rollout"], "time/sync_s": t_sync, **sync_metrics,
            "time/reward_s": self._clock["reward"], "time/update_s": t3 - t2,
        })
        metrics = average_over_ranks(metrics, acc.device)
        everyone = torch.tensor(batch.first_round, dtype=torch.float32).view(-1)  # [prompts * G], every rank's
        metrics["reward/mean"] = everyone.mean().item()
        metrics["reward/std"] = everyone.std().item() if len(everyone) > 1 else 0.0
        metrics.update(batch.metrics)  # rlvr.difficulty's, the same on every rank
        metrics.update({"time/step_s": time.perf_counter() - t0, "step": step + 1, "epoch": self.sampler.epoch})
        return metrics, batch.rows, batch.mine

    # ------------------------------------------------------------------ loop

    def trainer_state(self, step: int, tracker: Tracker) -> dict:
        return {"step": step, "sampler": self.sampler.state_dict(), "wandb_id": tracker.wandb_id,
                "world_size": self.accelerator.num_processes, "model": self.cfg.model.name_or_path,
                "lr_schedule": self.lr_schedule.state_dict(), "difficulty": self.difficulty.state_dict()}

    def _log_prompts(self, step: int, indices: list[int], mine: list[int]) -> None:
        """Which prompts each step used, and which rank sampled each (``prompts.jsonl``)."""
        acc = self.accelerator
        by_rank = gather_objects(acc, mine)
        if not acc.is_main_process:
            return
        row = {"step": step, "epoch": self.sampler.epoch, "indices": indices,
               "ids": [self.examples[i].id for i in indices], "by_rank": by_rank}
        with open(os.path.join(self.cfg.output_dir, "prompts.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def train(self) -> dict[str, float]:
        """Run to ``trainer.max_steps``, or until a stop signal (then ``self.stopped_by`` names it)."""
        cfg, acc = self.cfg, self.accelerator
        total, every = cfg.trainer.max_steps, cfg.checkpoint.every_steps
        tracker = Tracker(cfg, acc.is_main_process, total, self.start_step, wandb_id=self.wandb_id)
        self.samples.wandb_run = tracker.wandb_run
        signals = self.signals
        self.stopped_by: str | None = None
        metrics: dict[str, float] = {}
        try:
            step = self.start_step
            while step < total:
                metrics, indices, mine = self.step(step)
                step += 1
                if self.evaluator.due(step, total):
                    self._ready_engine()
                    metrics.update(self.evaluator.run(self.engine, step))
                    self.engine.sleep()
                tracker.log(metrics)
                if "eval/pass@1" in metrics and cfg.log.plots and acc.is_main_process:
                    plot_run(cfg.output_dir)
                self._log_prompts(step, indices, mine)
                stopping = signals.agree(acc)  # every rank stops after the same step
                if step == total or (every and step % every == 0) or stopping:
                    save_checkpoint(acc, cfg.output_dir, step, self.trainer_state(step, tracker),
                                    cfg.checkpoint.keep_last)
                if stopping and step < total:
                    self.stopped_by = stopping
                    logger.info("stopped after step %d on %s; checkpoint saved", step, stopping)
                    break
            if self.stopped_by is None and cfg.checkpoint.save_final_model:
                save_trained(acc, acc.unwrap_model(self.model).policy, self.processor,
                             os.path.join(cfg.output_dir, "final"))
        finally:
            signals.uninstall()
            tracker.close()
            self.engine.close()
        return metrics
