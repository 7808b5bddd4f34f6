"""Checkpoints that are either complete or absent.

A checkpoint is written into ``checkpoints/.tmp-step_NNNNNN``, synced to disk, marked with a
``COMPLETE`` file, then renamed to ``checkpoints/step_NNNNNN``. A run killed mid-save leaves
only a ``.tmp-`` folder, which ``latest_checkpoint`` ignores (and the next save removes).

Contents: accelerate's ``save_state`` (model, optimizer, scheduler, and every rank's RNG
states; DeepSpeed-aware) plus ``trainer_state.json`` (step, data-loader position, wandb id).
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


def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
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
    accelerator.save_state(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "trainer_state.json"), "w", encoding="utf-8") as f:
            json.dump(trainer_state, f, indent=2)
        _fsync_tree(tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):  # a re-save of the same step (e.g. after a resume)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_tree(root)
        for _, old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(path: str) -> dict:
    with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f)
