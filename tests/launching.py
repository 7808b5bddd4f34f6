"""Helpers for tests that run launch/train.py for real: one process, accelerate launch, or SLURM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")
ACCELERATE_CONFIGS = os.path.join(ROOT, "launch", "accelerate")
BIN = os.path.dirname(sys.executable)
# Timing keys differ run to run; everything else in a metrics row must match.
VOLATILE = ("time/",)


def env(**extra) -> dict[str, str]:
    """The environment of a training subprocess: CPU DeepSpeed, offline wandb, one thread per process."""
    base = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ROOT, "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    return {**base, **extra}


def make_data(out: str, rows: int = 16) -> str:
    from rlvr.devtools.make_demo_data import main as make_demo_data

    make_demo_data(["--out", out, "--train", str(rows), "--val", "4"])
    return out


def train_args(model_dir: str, data_dir: str, out_dir: str, *extra: str) -> list[str]:
    """A small, fast demo run whose reward varies within every group (so every step updates)."""
    return ["--config", os.path.join(ROOT, "recipes", "demo.yaml"), f"model.name_or_path={model_dir}",
            f"data.train_files={data_dir}/train.jsonl", f"data.val_files={data_dir}/val.jsonl",
            f"output_dir={out_dir}", "trainer.max_steps=3", "trainer.prompts_per_step=4", "rollout.group_size=4",
            "rollout.max_new_tokens=6", "trainer.micro_batch_size=4", "rollout.micro_batch_size=8",
            "log.progress_bar=false", "reward.functions=[{name: 'tests.reward_fixtures:odd_length'}]", *extra]


def command(args: list[str], config: str | None = None, processes: int = 1) -> list[str]:
    """launch/train.py alone, or under `accelerate launch --config_file launch/accelerate/<config>.yaml`."""
    if config is None:
        return [sys.executable, TRAIN, *args]
    return [os.path.join(BIN, "accelerate"), "launch", "--config_file",
            os.path.join(ACCELERATE_CONFIGS, f"{config}.yaml"), "--num_processes", str(processes),
            "--main_process_port", str(free_port()), TRAIN, *args]


def run(args: list[str], config: str | None = None, processes: int = 1, timeout: float = 900,
        **env_extra) -> subprocess.CompletedProcess:
    return subprocess.run(command(args, config, processes), capture_output=True, text=True, cwd=ROOT,
                          env=env(**env_extra), timeout=timeout, start_new_session=True)


def start(args: list[str], config: str | None = None, processes: int = 1, log: str | None = None,
          **env_extra) -> subprocess.Popen:
    """Start a run in its own process group (so a test can signal or kill all of it)."""
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(command(args, config, processes), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=env(**env_extra), start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE)}


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2, proc: subprocess.Popen | None = None):
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` s or if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def assert_same_trajectory(expected: list[dict], got: list[dict], keys=("reward/mean", "reward/std", "loss",
                           "grad_norm", "entropy", "kl", "response_length/mean"), rtol: float = 1e-4,
                           atol: float = 1e-5) -> dict[str, float]:
    """Every step's ``keys`` agree within tolerance; returns each key's largest absolute difference."""
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    worst: dict[str, float] = {}
    for a, b in zip(expected, got):
        for k in keys:
            if k not in a:
                continue
            diff = abs(a[k] - b[k])
            worst[k] = max(worst.get(k, 0.0), diff)
            assert diff <= atol + rtol * abs(a[k]), f"step {a['step']} {k}: {a[k]} vs {b[k]}"
    return worst


def describe(worst: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
