"""Checkpoints that are either complete or absent, and resuming from them.

A checkpoint is written into ``checkpoints/.tmp-step_NNNNNN``, synced to disk, marked with a
``COMPLETE`` file, then renamed to ``checkpoints/step_NNNNNN``. A run killed mid-save leaves
only a ``.tmp-`` folder, which ``latest_checkpoint`` ignores (and the next save removes).

Contents: accelerate's ``save_state`` (model, optimizer, scheduler, and every rank's RNG
states: Python, NumPy, torch; DeepSpeed-aware) plus ``trainer_state.json`` (step,
data-loader position, wandb run id, world size). The model part holds the trainable
weights only (the adapter under LoRA; the language model with a frozen vision tower):
frozen weights never change and are loaded again from ``model.name_or_path`` on resume.

Resume (``resume=auto`` or ``resume=PATH``) restores all of it, and the run's
``metrics.jsonl`` and ``prompts.jsonl`` are cut back to the checkpoint's step, so an
interrupted-and-resumed run leaves the same files as an uninterrupted one.

Resume with another config (``plan_resume``): the config is compared with the one the run
last started with (``config.yaml``, or the newest ``config.resume-NNNNNN.yaml``); changes
that only lengthen the run or change how it is watched, saved or batched for memory
(``SAFE_RESUME_CHANGES``) are accepted and listed, anything else is refused unless
``checkpoint.allow_resume_changes=true``. A resume with changes writes its config to
``config.resume-<step>.yaml``; ``config.yaml`` stays the original. A run already at
``trainer.max_steps`` is reported finished, and nothing runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field

from rlvr.distributed import is_deepspeed

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{6,})$")
MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
RUN_LOGS = ("metrics.jsonl", "prompts.jsonl")  # one row per step, each with a "step" key


def _fsync_tree(path: str) -> None:
    for root, dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        for name in dirs:
            _fsync_dir(os.path.join(root, name))
    _fsync_dir(path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _NAME.match(name)
        path = os.path.join(root, name)
        if match and os.path.isfile(os.path.join(path, MARKER)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER)) and os.path.isfile(os.path.join(path, STATE_FILE))


# ------------------------------------------------------------------ which checkpoint to start from


class ResumeError(RuntimeError):
    """Starting or resuming here would lose or mix up work; the message says what to do."""


def resolve_resume(output_dir: str, resume: str | None) -> str | None:
    """The checkpoint to resume from, or None for a fresh start; raises where that would lose work.

    ``resume=None`` refuses an output_dir that already holds a run: never append to, or
    overwrite, another run's metrics and checkpoints.
    """
    used = any(os.path.exists(os.path.join(output_dir, f)) for f in RUN_LOGS) or bool(list_checkpoints(output_dir))
    if resume is None:
        if used:
            raise ResumeError(
                f"output_dir {output_dir} already holds a run (metrics.jsonl or checkpoints). Continue it with "
                "resume=auto, or choose a new output_dir.")
        return None
    if resume == "auto":
        path = latest_checkpoint(output_dir)
        if path is None and used:
            logger.warning("resume=auto: %s holds a run but no complete checkpoint; starting from step 0", output_dir)
        return path
    if not is_complete(resume):
        found = [p for _, p in list_checkpoints(output_dir)]
        raise ResumeError(
            f"resume={resume} is not a complete checkpoint (a folder with {MARKER} and {STATE_FILE}). "
            f"Complete checkpoints in {output_dir}: {found or 'none'}; or use resume=auto.")
    return resume


def truncate_run_logs(output_dir: str, step: int) -> None:
    """Drop rows of steps after ``step`` from the run's per-step logs (they will be run again)."""
    for name in RUN_LOGS:
        path = os.path.join(output_dir, name)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut by the kill: everything after it is later anyway
            if row.get("step", 0) > step:
                break
            keep.append(line)
        if len(keep) != len(lines):
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            logger.info("%s: kept %d of %d rows (up to step %d)", name, len(keep), len(lines), step)


# ------------------------------------------------------------------ saving and loading


def install_hooks(accelerator, model) -> None:
    """Make ``save_state`` keep only ``model``'s trainable weights (non-DeepSpeed runs) and
    ``load_state`` check that a checkpoint has exactly those.

    Under DeepSpeed the same is done by ``exclude_frozen_parameters`` (see ``save_checkpoint``).
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}

    def before_save(models, weights, output_dir):
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if k in trainable}

    def before_load(models, input_dir):
        from safetensors import safe_open

        path = os.path.join(input_dir, "model.safetensors")
        if not os.path.exists(path):
            return
        with safe_open(path, "pt") as f:
            saved = set(f.keys())
        if saved != trainable:
            missing, extra = sorted(trainable - saved)[:5], sorted(saved - trainable)[:5]
            raise ValueError(
                f"checkpoint {input_dir} does not hold this model's trainable weights (missing e.g. {missing}, "
                f"unexpected e.g. {extra}). Was it written with another model.lora / model.freeze_vision_tower "
                "setting or another model? Resume with the config the checkpoint was written with.")

    if not is_deepspeed(accelerator):
        accelerator.register_save_state_pre_hook(before_save)
        accelerator.register_load_state_pre_hook(before_load)


def save_checkpoint(accelerator, output_dir: str, step: int, trainer_state: dict, keep_last: int) -> str:
    """Save a complete checkpoint of ``step`` (collective: every rank must call it)."""
    root = os.path.join(output_dir, "checkpoints")
    final = os.path.join(root, f"step_{step:06d}")
    tmp = os.path.join(root, f".tmp-step_{step:06d}")
    if accelerator.is_main_process:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    kwargs = {"exclude_frozen_parameters": True} if is_deepspeed(accelerator) else {}
    accelerator.save_state(tmp, safe_serialization=True, **kwargs)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(trainer_state, f, indent=2)
        _fsync_tree(tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):  # a re-save of the same step (e.g. after a resume)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str) -> dict:
    """Restore model, optimizer, scheduler and RNG states from ``path``; returns its trainer state."""
    state = load_trainer_state(path)
    world = state.get("world_size")
    if world is not None and world != accelerator.num_processes:
        logger.warning("checkpoint %s was written by %d processes, resuming with %d: per-rank RNG states and "
                       "the split of prompts across ranks differ, so the run will not repeat exactly",
                       path, world, accelerator.num_processes)
    # Frozen weights are not in the checkpoint (see install_hooks / exclude_frozen_parameters).
    kwargs = {"load_module_strict": False} if is_deepspeed(accelerator) else {"strict": False}
    accelerator.load_state(path, **kwargs)
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state


def load_trainer_state(path: str) -> dict:
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------ resuming with a changed config

# Keys a resumed run may change freely: they change how long it runs, how it is watched, or
# memory and speed, not what is learned from what. A key listed with a trailing dot covers its
# whole section. Anything else (model, data, algorithm, rollout sampling, batch shape, the lr
# and its schedule, seeds) would mix two different runs in one output_dir and is refused
# unless checkpoint.allow_resume_changes=true.
SAFE_RESUME_CHANGES = (
    "output_dir", "resume", "trainer.max_steps", "checkpoint.", "eval.", "log.", "data.val_files", "data.strict",
    "trainer.collective_timeout_s", "trainer.micro_batch_size", "trainer.micro_batch_tokens",
    "trainer.logprob_chunk_size", "trainer.shared_prompt_forward", "rollout.micro_batch_size",
    "rollout.shared_prefill", "rollout.zero3_gather_weights", "model.gradient_checkpointing",
    "model.attn_implementation", "reward.num_workers", "reward.timeout_s",
)
_NOT_COMPARED = ("output_dir", "resume")  # where the run is and how it was started, not what it is
_RESUMED_CONFIG = re.compile(r"^config\.resume-(\d{6,})\.yaml$")


def is_safe_change(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_RESUME_CHANGES)


def run_config_path(output_dir: str, step: int) -> str | None:
    """The config the run was last started with, up to ``step``: ``config.yaml`` (the original),
    or the newest ``config.resume-NNNNNN.yaml`` written by a resume at step <= ``step``."""
    best, best_step = None, -1
    if os.path.isfile(os.path.join(output_dir, "config.yaml")):
        best, best_step = os.path.join(output_dir, "config.yaml"), 0
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        m = _RESUMED_CONFIG.match(name)
        if m and best_step < int(m.group(1)) <= step:
            best, best_step = os.path.join(output_dir, name), int(m.group(1))
    return best


def resumed_config_name(step: int) -> str:
    """Where a resume at ``step`` with a changed config writes it; ``config.yaml`` stays the original."""
    return f"config.resume-{step:06d}.yaml"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


def config_changes(before, after) -> list[tuple[str, object, object]]:
    """(key, before, after) for every leaf key whose value differs, in config order."""
    from rlvr.config import config_to_dict

    a, b = _flat(config_to_dict(before)), _flat(config_to_dict(after))
    return [(k, a.get(k), b.get(k)) for k in b if a.get(k) != b.get(k) and k not in _NOT_COMPARED]


def _short(value) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class ResumePlan:
    """What ``resume=`` will do for a config: start fresh, or continue a checkpoint, and with which changes."""

    checkpoint: str | None = None  # None: a fresh start
    step: int = 0  # RL steps the checkpoint has done
    max_steps: int = 0  # the run's trainer.max_steps now
    changes: list = field(default_factory=list)  # (key, before, now) against the config the run last used
    compared_with: str | None = None  # that config file
    note: str | None = None  # why the configs could not be compared, if they could not
    allowed: bool = False  # checkpoint.allow_resume_changes

    @property
    def finished(self) -> bool:
        return self.checkpoint is not None and self.step >= self.max_steps

    @property
    def refused(self) -> list[tuple[str, object, object]]:
        return [c for c in self.changes if not is_safe_change(c[0])]

    def describe(self) -> str:
        """One paragraph: from where, which changes, and whether they are accepted."""
        if self.checkpoint is None:
            return "starts a fresh run (no complete checkpoint to resume from)"
        if self.finished:
            return (f"the run is finished: its checkpoint {self.checkpoint} is at step {self.step} of "
                    f"trainer.max_steps={self.max_steps}; nothing to do. To train longer, raise trainer.max_steps "
                    "(a cosine learning rate continues from where it ended).")
        head = f"resumes from {self.checkpoint} at step {self.step} of {self.max_steps}"
        if self.note:
            return f"{head}; {self.note}"
        if not self.changes:
            return f"{head}, with the config it last ran with ({self.compared_with})"
        lines = [f"{head}, with {len(self.changes)} change(s) to {self.compared_with}:"]
        for key, old, new in self.changes:
            tag = "" if is_safe_change(key) else "   <- changes what the run means"
            lines.append(f"  {key}: {_short(old)} -> {_short(new)}{tag}")
        if self.refused and not self.allowed:
            lines.append(self.refusal())
        elif self.changes:
            lines.append(f"The config it resumes with is written to {resumed_config_name(self.step)}; config.yaml "
                         "stays the original.")
        return "\n".join(lines)

    def refusal(self) -> str:
        keys = ", ".join(k for k, _, _ in self.refused)
        key, old, _ = self.refused[0]
        back = f"{key}={_short(old)}".replace("'", "")
        return (f"Refused: {keys} would make the rest of the run a different run from its first {self.step} steps. "
                f"Put it back as it was (e.g. {back}; a key you did not touch is a default that changed with "
                "rlvr), start a new run (a new output_dir; model.name_or_path can point to this run's final/ "
                "folder), or set checkpoint.allow_resume_changes=true if you mean it.")


def plan_resume(cfg) -> ResumePlan:
    """Decide, without loading anything heavy, what ``cfg.resume`` will do in ``cfg.output_dir``.

    Raises ResumeError where training would refuse to start (an output_dir that holds a run
    without resume=, a resume path that is not a checkpoint). The caller refuses meaning
    changes (``plan.refused``) unless ``plan.allowed``.
    """
    from rlvr.config import ConfigError, load_config

    plan = ResumePlan(max_steps=cfg.trainer.max_steps, allowed=cfg.checkpoint.allow_resume_changes)
    plan.checkpoint = resolve_resume(cfg.output_dir, cfg.resume)
    if plan.checkpoint is None:
        return plan
    try:
        plan.step = int(load_trainer_state(plan.checkpoint)["step"])
    except (OSError, ValueError, KeyError) as e:
        raise ResumeError(f"cannot read {os.path.join(plan.checkpoint, STATE_FILE)}: {e}. Resume from an older "
                          "checkpoint with resume=PATH, or start a new output_dir.") from None
    plan.compared_with = run_config_path(cfg.output_dir, plan.step)
    if plan.compared_with is None:
        plan.note = "the run has no config.yaml to compare the config with (changes cannot be checked)"
        return plan
    try:
        before = load_config(plan.compared_with)
    except ConfigError as e:
        plan.note = f"its {plan.compared_with} no longer loads ({e}); changes cannot be checked"
        return plan
    plan.changes = config_changes(before, cfg)
    return plan
