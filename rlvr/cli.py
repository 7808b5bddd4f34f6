"""Command-line plumbing shared by the entry points: logging, and errors as messages.

Exit codes of ``launch/train.py``: 0 finished (or nothing to do), 2 a problem with the
config, the data, the output folder or a file the user named (a message says what to
change), 1 a failure while running (a message; the traceback goes to ``<output_dir>/train.log``),
128 + N stopped by signal N after a checkpoint (SIGTERM, SIGUSR1, a first Ctrl-C).
User errors are printed once, by rank 0 (every rank meets the same one); runtime failures
by every rank that has one, since it may be the only one.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

from rlvr.config import ConfigError, load_config, parse_cli, check_config
from rlvr.logs import LOG_NAME, rank_of_process, setup_logging

def _collective_failure_message(cfg, error: BaseException) -> str:
    return (
        f"rank {rank_of_process()}: a collective operation failed or waited longer than trainer.collective_timeout_s="
        f"{cfg.trainer.collective_timeout_s} s ({type(error).__name__}). Another rank has most likely died or "
        "hung: look for the first error in the other ranks' output (or the node's log). If a step legitimately "
        "takes longer between collectives, raise trainer.collective_timeout_s.")


def _user_error(message: str) -> int:
    """A problem the user fixes: printed once (rank 0), exit code 2."""
    if rank_of_process() == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def _runtime_error(error: BaseException, log_file: str | None) -> int:
    """A failure while running: one line per failing rank, the traceback in the log file; exit code 1."""
    text = f"{type(error).__name__}: {error}".strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if len(first) > 500:
        first = first[:500] + " ..."
    hint = ""
    if type(error).__name__ == "OutOfMemoryError":
        hint = (" Out of GPU memory: lower rollout.micro_batch_size (generation) or trainer.micro_batch_size / "
                "set trainer.micro_batch_tokens (update); `python -m rlvr.validate` estimates the budget.")
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(f"rank {rank_of_process()} failed:\n" + "".join(traceback.format_exception(error)))
        where = f" (traceback in {log_file})"
    else:
        where = ""
        traceback.print_exception(error)
    print(f"error: rank {rank_of_process()}: {first}{where}.{hint}", file=sys.stderr, flush=True)
    return 1


def run_training(argv: list[str]) -> int:
    """launch/train.py: config, checks, resume decision, training, end report; returns the exit code."""
    log_file = None
    setup_logging()
    try:
        try:
            path, overrides = parse_cli(argv)
            cfg = load_config(path, overrides)
            # the checks rlvr.validate --num-processes runs, for this launch's process count
            check_config(cfg, num_processes=int(os.environ.get("WORLD_SIZE", "1") or 1))
        except ConfigError as e:
            if rank_of_process() == 0:
                print(f"config error: {e}", file=sys.stderr)
            return 2
        from rlvr.rollout.vllm_env import prepare_for_run

        prepare_for_run(cfg)  # vLLM's environment before the processor loads
        log_file = os.path.join(cfg.output_dir, LOG_NAME)
        setup_logging(log_file)
        return _train(cfg, log_file)
    except KeyboardInterrupt:  # Ctrl-C before the trainer's handler was installed, or after it was lifted
        if rank_of_process() == 0:
            print("\ninterrupted before training started or after it ended; nothing to checkpoint", file=sys.stderr)
        return 128 + signal.SIGINT


def _train(cfg, log_file: str) -> int:
    from rlvr.checkpoint import ResumeError, plan_resume
    from rlvr.data import DataError

    if rank_of_process() == 0:
        print(f"rlvr: full log in {log_file}", file=sys.stderr, flush=True)
    try:
        plan = plan_resume(cfg)  # before any model loads: a finished or refused resume ends here
        if plan.finished:
            if rank_of_process() == 0:
                print(f"resume={cfg.resume}: {plan.describe()}", flush=True)
            return 0
        if plan.refused and not plan.allowed:
            raise ResumeError(f"resume={cfg.resume} {plan.describe()}")
        from rlvr.validate import preflight

        report = preflight(cfg)  # the cheap part of `python -m rlvr.validate`, before any GPU time
        if report.failed:
            if rank_of_process() == 0:
                print(report.render(), file=sys.stderr)
            return 2
    except (ConfigError, DataError, ResumeError) as e:
        return _user_error(str(e))

    from rlvr.distributed import is_collective_failure, shutdown_distributed

    try:
        from rlvr.trainer import Trainer  # torch, transformers, accelerate: a broken install fails here

        if cfg.algorithm.loss == "sft":  # the supervised cold start: the same loop on given trajectories
            from rlvr.sft import SFTTrainer as Trainer
        trainer = Trainer(cfg)
        metrics = trainer.train()
    except (ConfigError, DataError, ResumeError) as e:
        return _user_error(str(e))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        return _user_error(f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - every other failure: a message, the traceback in the log
        if not is_collective_failure(e):
            return _runtime_error(e, log_file)
        with open(log_file, "a", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(e)))
        print(f"\nerror: {_collective_failure_message(cfg, e)} (traceback in {log_file})", file=sys.stderr, flush=True)
        os._exit(1)  # skip interpreter teardown: it can block on the broken process group
    try:
        return _report_end(cfg, trainer, metrics, log_file)
    finally:
        shutdown_distributed()


def _report_end(cfg, trainer, metrics: dict, log_file: str | None = None) -> int:
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
        last = metrics.get("reward/mean")
        print(f"\nfinished {cfg.trainer.max_steps} steps" + (f"; last reward/mean {last:.3f}" if last is not None else ""))
        print(f"metrics: {os.path.join(out, 'metrics.jsonl')}")
        if cfg.checkpoint.save_final_model:
            print(f"final model: {os.path.join(out, 'final')}")
        if log_file:
            print(f"log: {os.path.abspath(log_file)}")
        from rlvr.metrics import run_summary
        from rlvr.plot import plot_run

        if cfg.log.plots:
            plot_run(cfg.output_dir)
        print("\n" + run_summary(cfg.output_dir))
    return 0
