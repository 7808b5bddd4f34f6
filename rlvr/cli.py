"""Command-line plumbing shared by the entry points."""

from __future__ import annotations

import logging
import os
import sys

from rlvr.config import ConfigError, load_config, parse_cli, validate


def setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_training(argv: list[str]) -> int:
    setup_logging()
    try:
        path, overrides = parse_cli(argv)
        cfg = load_config(path, overrides)
        validate(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from rlvr.trainer import Trainer

    trainer = Trainer(cfg)
    metrics = trainer.train()
    if trainer.accelerator.is_main_process:
        out = os.path.abspath(cfg.output_dir)
        print(f"\nfinished {cfg.trainer.max_steps} steps; last reward/mean {metrics.get('reward/mean', float('nan')):.3f}")
        print(f"metrics: {os.path.join(out, 'metrics.jsonl')}")
        if cfg.checkpoint.save_final_model:
            print(f"final model: {os.path.join(out, 'final')}")
    return 0
