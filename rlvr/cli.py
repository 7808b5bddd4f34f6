"""Command-line plumbing shared by the entry points."""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback

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


def _collective_failure_message(cfg, error: BaseException) -> str:
    rank = os.environ.get("RANK", "0")
    return (
        f"rank {rank}: a collective operation failed or waited longer than trainer.collective_timeout_s="
        f"{cfg.trainer.collective_timeout_s} s ({type(error).__name__}). Another rank has most likely died or "
        "hung: look for the first error in the other ranks' output (or the node's log). If a step legitimately "
        "takes longer between collectives, raise trainer.collective_timeout_s.")


def run_training(argv: list[str]) -> int:
    setup_logging()
    try:
        path, overrides = parse_cli(argv)
        cfg = load_config(path, overrides)
        validate(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from rlvr.validate import preflight

    report = preflight(cfg)  # the cheap part of `python -m rlvr.validate`, before any GPU time
    if report.failed:
        print(report.render(), file=sys.stderr)
        return 2
    from rlvr.checkpoint import ResumeError
    from rlvr.distributed import is_collective_failure, shutdown_distributed
    from rlvr.trainer import Trainer

    try:
        trainer = Trainer(cfg)
        metrics = trainer.train()
    except ResumeError as e:  # a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if not is_collective_failure(e):
            raise
        traceback.print_exc()
        print(f"\nerror: {_collective_failure_message(cfg, e)}", file=sys.stderr, flush=True)
        os._exit(1)  # skip interpreter teardown: it can block on the broken process group
    try:
        return _report_end(cfg, trainer, metrics)
    finally:
        shutdown_distributed()


def _report_end(cfg, trainer, metrics: dict) -> int:
    """What the main process prints at the end of a run; the exit code (0, or 128 + signal when stopped)."""
    from rlvr.distributed import report_stop

    acc = trainer.accelerator
    out = os.path.abspath(cfg.output_dir)
    if trainer.stopped_by is not None:
        if acc.is_main_process:
            report_stop(trainer.stopped_by)
            print(f"\nstopped by {trainer.stopped_by} after a checkpoint in {os.path.join(out, 'checkpoints')}; "
                  "continue with the same command and resume=auto", flush=True)
        # An orderly stop, but not a finished run: exit like a process ended by that signal.
        return 128 + int(getattr(signal, trainer.stopped_by))
    if acc.is_main_process:
        print(f"\nfinished {cfg.trainer.max_steps} steps; last reward/mean {metrics.get('reward/mean', float('nan')):.3f}")
        print(f"metrics: {os.path.join(out, 'metrics.jsonl')}")
        if cfg.checkpoint.save_final_model:
            print(f"final model: {os.path.join(out, 'final')}")
        from rlvr.metrics import run_summary
        from rlvr.plot import plot_run

        if cfg.log.plots:
            plot_run(cfg.output_dir)
        print("\n" + run_summary(cfg.output_dir))
    return 0
