"""Checkpoints are complete or absent; a killed run resumed with resume=auto repeats the uninterrupted one."""

import json
import os
import signal
import time

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


# ------------------------------------------------------------------ resuming with a changed config


def _run_with_config(tmp_path, step, **changes):
    """A fake run: config.yaml, a complete checkpoint at ``step``; returns the config resumed with ``changes``."""
    from rlvr.config import load_config, save_config

    base = ["model.name_or_path=m", "data.train_files=t.jsonl", f"output_dir={tmp_path}", "trainer.max_steps=10"]
    save_config(load_config(None, base), tmp_path / "config.yaml")
    _fake_checkpoint(tmp_path, step)
    return load_config(None, base + ["resume=auto"] + [f"{k}={v}" for k, v in changes.items()])


def test_resume_plan_lists_changes_and_refuses_those_that_change_the_run(tmp_path):
    from rlvr.checkpoint import plan_resume

    plan = plan_resume(_run_with_config(tmp_path, 3, **{"trainer.max_steps": 20, "eval.every_steps": 5}))
    assert plan.step == 3 and not plan.finished and plan.refused == []
    assert plan.changes == [("trainer.max_steps", 10, 20), ("eval.every_steps", 0, 5)]
    text = plan.describe()
    assert f"resumes from {tmp_path}/checkpoints/step_000003 at step 3 of 20, with 2 change(s) to {tmp_path}/config.yaml" \
        in text
    assert "  trainer.max_steps: 10 -> 20\n  eval.every_steps: 0 -> 5\n" in text and "Refused" not in text
    plan = plan_resume(_run_with_config(tmp_path / "b", 3, **{"algorithm.loss": "grpo", "trainer.lr": 1e-5}))
    assert [k for k, _, _ in plan.refused] == ["algorithm.loss", "trainer.lr"]
    assert "  algorithm.loss: 'sapo' -> 'grpo'   <- changes what the run means" in plan.describe()
    assert "Refused: algorithm.loss, trainer.lr would make the rest of the run a different run" in plan.describe()
    assert "checkpoint.allow_resume_changes=true" in plan.describe()
    allowed = _run_with_config(tmp_path / "c", 3, **{"algorithm.loss": "grpo",
                                                     "checkpoint.allow_resume_changes": "true"})
    plan = plan_resume(allowed)
    assert plan.allowed and "Refused" not in plan.describe()
    finished = plan_resume(_run_with_config(tmp_path / "d", 10))
    assert finished.finished and finished.describe().startswith(
        f"the run is finished: its checkpoint {tmp_path}/d/checkpoints/step_000010 is at step 10 of trainer.max_steps=10")


def test_the_config_compared_with_is_the_one_the_run_last_started_with(tmp_path):
    from rlvr.checkpoint import resumed_config_name, run_config_path

    assert run_config_path(str(tmp_path), 5) is None
    (tmp_path / "config.yaml").write_text("{}")
    (tmp_path / resumed_config_name(2)).write_text("{}")
    (tmp_path / resumed_config_name(7)).write_text("{}")  # a later resume that never reached a checkpoint
    assert run_config_path(str(tmp_path), 1) == str(tmp_path / "config.yaml")
    assert run_config_path(str(tmp_path), 5) == str(tmp_path / "config.resume-000002.yaml")
    assert run_config_path(str(tmp_path), 7) == str(tmp_path / "config.resume-000007.yaml")


def _lrs(path):
    return {r["step"]: r["lr"] for r in rows(path)}


@pytest.mark.slow
def test_resume_with_a_changed_config(qwen25_dir, tmp_path):
    """A finished run says so; a meaning change is refused with the diff; a longer run keeps the lr
    continuous and config.yaml original. The demo recipe: lr 3e-3, cosine down to 0.1 of it."""
    data = make_data(str(tmp_path / "data"), rows=8)
    out = str(tmp_path / "run")
    args = train_args(qwen25_dir, data, out, "trainer.max_steps=4", "checkpoint.every_steps=2",
                      "checkpoint.save_final_model=false", "log.plots=false")
    first = run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    straight = _lrs(f"{out}/metrics.jsonl")
    assert straight[3] == pytest.approx(3e-3 * 0.55)

    finished = run(args + ["resume=auto"])
    text = finished.stdout + finished.stderr
    assert finished.returncode == 0 and "nan" not in text and "Traceback" not in text, text[-3000:]
    assert f"the run is finished: its checkpoint {out}/checkpoints/step_000004 is at step 4 of trainer.max_steps=4" \
        in text
    assert len(rows(f"{out}/metrics.jsonl")) == 4

    refused = run(args + ["resume=auto", "trainer.max_steps=6", "algorithm.loss=grpo"])
    text = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "Traceback" not in text, text[-3000:]
    assert "  algorithm.loss: 'sapo' -> 'grpo'   <- changes what the run means\n  trainer.max_steps: 4 -> 6\n" in text
    assert text.count("Refused: algorithm.loss would make the rest of the run a different run") == 1

    import shutil

    shutil.rmtree(f"{out}/checkpoints/step_000004")  # as if it had stopped after step 2
    longer = run(args + ["resume=auto", "trainer.max_steps=6"])
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert f"resumes from {out}/checkpoints/step_000002 at step 2 of 6, with 1 change(s)" in longer.stderr
    lrs = _lrs(f"{out}/metrics.jsonl")
    assert sorted(lrs) == [1, 2, 3, 4, 5, 6]
    assert lrs[3] == pytest.approx(straight[3])  # the step after the resume: the lr it would have had
    # then p = 0.625, 0.75, 0.875, 1.0 (see test_lr_schedule_stays_continuous_when_max_steps_changes)
    assert [round(lrs[s] / 3e-3, 5) for s in (4, 5, 6)] == [0.37779, 0.23180, 0.13425]
    from rlvr.config import load_config

    assert load_config(f"{out}/config.yaml").trainer.max_steps == 4  # the original stays
    assert load_config(f"{out}/config.resume-000002.yaml").trainer.max_steps == 6


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_checkpoints_and_a_second_one_aborts(qwen25_dir, tmp_path, presses):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: the first checkpoints at the end of the
    step and says how to resume; a second (later than the launcher's echo window) exits at once."""
    data = make_data(str(tmp_path / "data"), rows=8)
    out, log = str(tmp_path / "run"), str(tmp_path / "log.txt")
    # long steps (600 tokens per response), so the second press lands inside step 2
    proc = start(train_args(qwen25_dir, data, out, "trainer.max_steps=20", "rollout.max_new_tokens=600",
                            "rollout.min_new_tokens=600", "data.max_prompt_tokens=200"), log=log)
    try:
        wait_for(lambda: os.path.exists(f"{out}/metrics.jsonl") and rows(f"{out}/metrics.jsonl"), 600,
                 "the first step", proc=proc)
        os.killpg(proc.pid, signal.SIGINT)
        if presses == 2:
            wait_for(lambda: "rlvr: got SIGINT" in open(log).read(), 30, "the first SIGINT's notice", poll=0.05)
            time.sleep(1.5)
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        kill_group(proc)
        proc.wait()
    text = open(log).read()
    assert proc.returncode == 128 + signal.SIGINT, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert text.count("rlvr: got SIGINT; will checkpoint at the end of this step and stop") == 1
    steps = len(rows(f"{out}/metrics.jsonl"))
    if presses == 1:
        assert [s for s, _ in list_checkpoints(out)] == [steps] and steps < 20
        assert f"stopped by SIGINT after a checkpoint in {out}/checkpoints; continue with the same command and " \
               "resume=auto" in text
    else:
        assert list_checkpoints(out) == [] and "stopped by SIGINT" not in text
        assert text.count("rlvr: second SIGINT; aborting now, without a checkpoint") == 1
