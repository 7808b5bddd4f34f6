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
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

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


def _is_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


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

    if not _is_deepspeed(accelerator):
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
    kwargs = {"exclude_frozen_parameters": True} if _is_deepspeed(accelerator) else {}
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
    kwargs = {"load_module_strict": False} if _is_deepspeed(accelerator) else {"strict": False}
    accelerator.load_state(path, **kwargs)
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state


def load_trainer_state(path: str) -> dict:
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)
