"""Checkpoints are complete or absent; a killed run resumed with resume=auto repeats the uninterrupted one."""

import json
import os
import signal

import pytest

from rlvr.checkpoint import (MARKER, STATE_FILE, ResumeError, latest_checkpoint, list_checkpoints, resolve_resume,
                             save_checkpoint, truncate_run_logs)
from tests.launching import kill_group, make_data, rows, run, stable, start, train_args, wait_for


def _fake_checkpoint(root, step, complete=True):
    path = root / "checkpoints" / f"step_{step:06d}"
    path.mkdir(parents=True)
    (path / STATE_FILE).write_text(json.dumps({"step": step}))
    if complete:
        (path / MARKER).write_text(f"{step}\n")
    return str(path)


def test_only_complete_checkpoints_count(tmp_path):
    _fake_checkpoint(tmp_path, 2)
    newest = _fake_checkpoint(tmp_path, 10)
    _fake_checkpoint(tmp_path, 12, complete=False)  # renamed but unmarked: impossible by construction, still ignored
    (tmp_path / "checkpoints" / ".tmp-step_000014").mkdir()  # a save cut short
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [2, 10]
    assert latest_checkpoint(str(tmp_path)) == newest
    assert latest_checkpoint(str(tmp_path / "nothing")) is None


def test_resume_decisions(tmp_path):
    fresh = str(tmp_path / "fresh")
    assert resolve_resume(fresh, None) is None and resolve_resume(fresh, "auto") is None
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ResumeError, match="already holds a run.*resume=auto"):
        resolve_resume(str(used), None)
    assert resolve_resume(str(used), "auto") is None  # no checkpoint yet: start over
    newest = _fake_checkpoint(used, 3)
    assert resolve_resume(str(used), "auto") == newest
    assert resolve_resume(str(used), newest) == newest
    partial = _fake_checkpoint(used, 4, complete=False)
    with pytest.raises(ResumeError, match="not a complete checkpoint"):
        resolve_resume(str(used), partial)


def test_run_logs_are_cut_back_to_the_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in (1, 2, 3))
                                            + '{"step": 4, "lo')  # the kill cut the last line
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    truncate_run_logs(str(tmp_path), 2)
    assert [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [r["step"] for r in rows(tmp_path / "prompts.jsonl")] == [1, 2]


class _CrashingAccelerator:
    """Just enough of an Accelerator for save_checkpoint; save_state dies half-way."""

    is_main_process = True

    class state:
        deepspeed_plugin = None

    def wait_for_everyone(self):
        pass

    def save_state(self, path, **kwargs):
        with open(os.path.join(path, "model.safetensors"), "w") as f:
            f.write("half a model")
        raise KeyboardInterrupt("killed during the save")


def test_a_save_cut_short_leaves_the_previous_checkpoint_latest(tmp_path):
    previous = _fake_checkpoint(tmp_path, 1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_CrashingAccelerator(), str(tmp_path), 2, {"step": 2}, keep_last=2)
    assert os.path.isdir(tmp_path / "checkpoints" / ".tmp-step_000002")
    assert not os.path.exists(tmp_path / "checkpoints" / "step_000002")
    assert latest_checkpoint(str(tmp_path)) == previous
    assert resolve_resume(str(tmp_path), "auto") == previous


@pytest.mark.slow
def test_sigkill_then_resume_auto_repeats_the_uninterrupted_run(qwen25_dir, tmp_path):
    """Kill -9 after step 2 of 5 (during or after its checkpoint), restart with resume=auto: steps
    3-5 have the same metrics as a run that was never interrupted, and no prompt is used twice or skipped."""
    data = make_data(str(tmp_path / "data"), rows=8)
    extra = ("trainer.max_steps=5", "checkpoint.every_steps=1", "checkpoint.keep_last=2", "algorithm.kl_coef=0.05",
             "model.lora.rank=4", "model.lora.dropout=0.1")  # dropout: the torch RNG state must be restored too
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    result = run(train_args(qwen25_dir, data, straight, *extra))
    assert result.returncode == 0, result.stderr[-3000:]

    proc = start(train_args(qwen25_dir, data, killed, *extra), log=str(tmp_path / "killed.log"))
    try:
        wait_for(lambda: os.path.exists(f"{killed}/metrics.jsonl") and len(rows(f"{killed}/metrics.jsonl")) >= 2,
                 600, "step 2", poll=0.02, proc=proc)
    finally:
        kill_group(proc, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = [s for s, _ in list_checkpoints(killed)]
    print(f"killed after step 2; complete checkpoints: {done}; partial: "
          f"{[n for n in os.listdir(f'{killed}/checkpoints') if n.startswith('.tmp')]}")
    assert done and done[-1] in (1, 2)

    # A fresh start in the same folder is refused; resume=auto continues.
    refused = run(train_args(qwen25_dir, data, killed, *extra))
    assert refused.returncode != 0 and "already holds a run" in refused.stderr
    resumed = run(train_args(qwen25_dir, data, killed, *extra, "resume=auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed}/checkpoints/step_{done[-1]:06d}" in resumed.stderr

    expected, got = rows(f"{straight}/metrics.jsonl"), rows(f"{killed}/metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    assert [stable(r) for r in got] == [stable(r) for r in expected]  # exactly equal, not just close
    prompts = rows(f"{killed}/prompts.jsonl")
    assert prompts == rows(f"{straight}/prompts.jsonl")
    for epoch in (0, 1):  # 8 rows, 4 per step: each epoch uses every row once
        used = sum((r["indices"] for r in prompts if r["epoch"] == epoch), [])
        assert sorted(used) == list(range(8))
    assert [s for s, _ in list_checkpoints(killed)] == [4, 5]  # keep_last=2
    from safetensors.torch import load_file

    a = load_file(f"{straight}/final/adapter_model.safetensors")
    b = load_file(f"{killed}/final/adapter_model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)


def test_stop_signal_is_remembered_and_agreed():
    from rlvr.distributed import StopSignal

    class _One:  # a single-process accelerator: agreeing needs no collective
        num_processes = 1

    signals = StopSignal().install()
    try:
        assert signals.agree(_One()) is None
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.received == "SIGTERM"  # the first one counts
        assert signals.agree(_One()) == "SIGTERM"
    finally:
        signals.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_step_boundary_and_stops(qwen25_dir, tmp_path):
    data = make_data(str(tmp_path / "data"), rows=8)
    out, stop_file = str(tmp_path / "run"), str(tmp_path / "stop")
    args = train_args(qwen25_dir, data, out, "trainer.max_steps=20")
    proc = start(args, log=str(tmp_path / "log.txt"), RLVR_STOP_FILE=stop_file)
    try:
        wait_for(lambda: os.path.exists(f"{out}/metrics.jsonl") and rows(f"{out}/metrics.jsonl"), 600,
                 "the first step", proc=proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        kill_group(proc)
        proc.wait()
    log = open(tmp_path / "log.txt").read()
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]  # stopped in order, but not finished
    steps = len(rows(f"{out}/metrics.jsonl"))
    assert steps < 20 and [s for s, _ in list_checkpoints(out)] == [steps]
    assert open(stop_file).read().strip() == "SIGTERM"  # what launch/slurm/train.sbatch reads
    assert "continue with the same command and resume=auto" in log
    assert not os.path.exists(f"{out}/final")
