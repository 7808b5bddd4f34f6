"""launch/train.py end to end on a tiny model: outputs, errors, --help."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")


def run(args, **kw):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True, env=env, cwd=ROOT, **kw)


def test_help_answers_at_once():
    start = time.perf_counter()
    out = run(["--help"])
    assert out.returncode == 0 and "--config" in out.stdout
    assert time.perf_counter() - start < 5, "--help must not import torch"


def test_unknown_key_is_a_config_error_naming_the_closest_key():
    out = run(["--config", os.path.join(ROOT, "recipes", "demo.yaml"), "rollout.group_sise=4"])
    assert out.returncode == 2
    assert "rollout.group_sise" in out.stderr and "rollout.group_size" in out.stderr


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from rlvr.devtools.make_demo_data import main as make_data

    out = tmp_path_factory.mktemp("data")
    make_data(["--out", str(out), "--train", "16", "--val", "4"])
    return str(out)


def _small(model_dir, data_dir, out_dir, *extra):
    return ["--config", os.path.join(ROOT, "recipes", "demo.yaml"), f"model.name_or_path={model_dir}",
            f"data.train_files={data_dir}/train.jsonl", f"data.val_files={data_dir}/val.jsonl",
            f"output_dir={out_dir}", "trainer.max_steps=2", "trainer.prompts_per_step=2", "rollout.group_size=4",
            "trainer.micro_batch_size=4", "rollout.micro_batch_size=8", "log.progress_bar=false", *extra]


def test_short_run_writes_config_metrics_checkpoint_and_final_model(qwen25_dir, tiny_data, tmp_path):
    out_dir = tmp_path / "run"
    result = run(_small(qwen25_dir, tiny_data, out_dir, "trainer.num_minibatches=2", "checkpoint.every_steps=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    required = ["step", "reward/mean", "reward/std", "loss", "lr", "grad_norm", "response_length/mean",
                "zero_std_groups", "time/rollout_s", "time/reward_s", "time/update_s", "time/step_s",
                "sapo/gate_below_half", "ratio/mean", "ratio/max", "entropy", "rollout/logprob_diff_max"]
    for key in required:
        assert key in rows[-1], key
    for row in rows:  # a gate metric is there exactly when the step had tokens with A > 0 / A < 0
        some_signal = row["zero_std_groups"] < 1  # a group whose rewards differ has both signs
        assert ("sapo/gate_pos" in row) == some_signal and ("sapo/gate_neg" in row) == some_signal, row
    assert rows[-1]["rollout/logprob_diff_max"] < 1e-4  # fp32: rollout and update agree
    assert os.path.isfile(out_dir / "config.yaml")
    ckpts = sorted(os.listdir(out_dir / "checkpoints"))
    assert ckpts == ["step_000001", "step_000002"]
    assert os.path.isfile(out_dir / "checkpoints" / "step_000002" / "COMPLETE")
    from transformers import AutoModelForImageTextToText

    from rlvr.models import load_processor

    AutoModelForImageTextToText.from_pretrained(str(out_dir / "final"))
    load_processor(str(out_dir / "final"))
    assert "final model:" in result.stdout and "metrics:" in result.stdout
    # A second run into the same folder refuses instead of mixing two runs' metrics.
    again = run(_small(qwen25_dir, tiny_data, out_dir))
    assert again.returncode != 0 and "already holds a run" in again.stderr


@pytest.mark.parametrize("loss", ["grpo", "dapo", "dr_grpo", "gspo", "cispo"])
def test_every_loss_runs_a_step(qwen25_dir, tiny_data, tmp_path, loss):
    result = run(_small(qwen25_dir, tiny_data, tmp_path / loss, f"algorithm.loss={loss}", "trainer.max_steps=1",
                        "checkpoint.save_final_model=false"))
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(open(tmp_path / loss / "metrics.jsonl").readline())
    assert "clip_frac" in row


def test_kl_penalty_loads_a_reference_and_logs_kl(qwen25_dir, tiny_data, tmp_path):
    # A reward that varies within every group, so step 1 surely moves the policy.
    result = run(_small(qwen25_dir, tiny_data, tmp_path / "kl", "algorithm.kl_coef=0.1", "trainer.max_steps=2",
                        "trainer.lr=1e-2", "checkpoint.save_final_model=false",
                        "reward.functions=[{name: 'tests.reward_fixtures:odd_length', weight: 1.0}]"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "kl" / "metrics.jsonl")]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # same weights as the reference at step 1
    assert rows[0]["grad_norm"] > 0
    assert rows[1]["kl"] > 1e-6  # after one update the policy has moved away from the reference
    assert "reward/odd_length" in rows[0]


def test_eval_samples_plots_and_offline_wandb_during_training(qwen25_dir, tiny_data, tmp_path):
    out_dir = tmp_path / "obs"
    result = run(_small(qwen25_dir, tiny_data, out_dir, "log.wandb=true", "eval.k=2", "eval.every_steps=1",
                        "log.samples_every=1", "checkpoint.save_final_model=false"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    assert all("eval/pass@1" in r for r in rows) and 0.0 <= rows[-1]["eval/pass@1"] <= 1.0
    assert os.path.isfile(out_dir / "samples" / "step_000001.html")
    assert os.path.getsize(out_dir / "plots" / "overview.png") > 10_000
    import glob

    assert glob.glob(str(out_dir / "wandb" / "offline-run-*" / "run-*.wandb"))


# ---------------------------------------------------------------- bad inputs: one message, never a traceback


def assert_one_message(result, code: int, message: str) -> str:
    """Exit ``code``, ``message`` printed exactly once, and no traceback anywhere in the output."""
    out = result.stdout + result.stderr
    assert result.returncode == code, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert out.count(message) == 1, out[-3000:]
    return out


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = json.dumps({"id": "ok", "question": "What is 1+1?", "answer": "2"})
    (d / "gold.jsonl").write_text(good + "\n" + json.dumps({"id": "g", "question": "Q?", "answer": "seven"}) + "\n")
    (d / "problem.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "problem": "What is 1+1?", "answer": "2"})
                                             + "\n" for i in range(3)))
    (d / "latin1.jsonl").write_bytes((good + "\n").encode() + '{"id": "l", "question": "Qu\xe9?", "answer": "2"}\n'
                                     .encode("latin-1") + (good.replace('"ok"', '"ok2"') + "\n").encode())
    (d / "empty.jsonl").write_text("\n\n")
    (d / "rows.parquet").write_text(good + "\n")  # JSONL under a parquet name
    return d


@pytest.mark.parametrize("case", ["missing_data", "strict_bad_row", "wrong_question_key", "missing_recipe",
                                  "missing_model", "bad_override", "used_output_dir", "bad_resume_path",
                                  "empty_data", "folder_as_data", "not_parquet", "vllm_not_installed"])
def test_bad_inputs_give_one_message_and_exit_2(qwen25_dir, tiny_data, bad_files, tmp_path, case):
    out_dir = tmp_path / "run"
    cases = {
        "missing_data": ([f"data.train_files={bad_files}/absent.jsonl"],
                         f"error: data file not found: {bad_files}/absent.jsonl\n"),
        "strict_bad_row": ([f"data.train_files={bad_files}/gold.jsonl", "data.strict=true"],
                           f"error: {bad_files}/gold.jsonl:2 (id g): gold answer 'seven' is not a single number"),
        "wrong_question_key": ([f"data.train_files={bad_files}/problem.jsonl"],
                               "the row has ['id', 'problem', 'answer']; if the question is in 'problem', set "
                               "data.question_key=problem\n"),
        "missing_recipe": (["--config", str(tmp_path / "nope.yaml")],
                           f"config error: Cannot read config file '{tmp_path / 'nope.yaml'}': No such file or directory."),
        "missing_model": ([f"model.name_or_path={tmp_path / 'no-model'}"],
                          f"FAIL  model.name_or_path={tmp_path / 'no-model'}:"),  # "no such folder" on the next line
        "bad_override": (["trainer.lr"], "config error: Unrecognised command-line argument 'trainer.lr'"),
        "used_output_dir": ([], f"error: output_dir {out_dir} already holds a run (metrics.jsonl or checkpoints). "
                                "Continue it with resume=auto, or choose a new output_dir.\n"),
        "bad_resume_path": ([f"resume={tmp_path / 'ckpt'}"], f"error: resume={tmp_path / 'ckpt'} is not a complete "
                                                              "checkpoint"),
    }
    cases.update({
        "empty_data": ([f"data.train_files={bad_files}/empty.jsonl"],
                       f"error: no rows in {bad_files}/empty.jsonl: the data is empty (blank lines do not count)\n"),
        "folder_as_data": ([f"data.train_files={bad_files}"],
                           f"error: {bad_files}: cannot read it as a save_to_disk folder (FileNotFoundError: "),
        "not_parquet": ([f"data.train_files={bad_files}/rows.parquet"],
                        f"error: {bad_files}/rows.parquet: cannot read it as a parquet file (ArrowInvalid: "),
        # this suite's environment has no vLLM (tests/vllm run in one that has)
        "vllm_not_installed": (["rollout.engine=vllm"], "FAIL  rollout.engine=vllm needs vLLM, which is not installed"),
    })
    if case == "used_output_dir":
        out_dir.mkdir()
        (out_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    extra, message = cases[case]
    args = _small(qwen25_dir, tiny_data, out_dir, "checkpoint.save_final_model=false")
    if extra and extra[0] == "--config":
        args = extra + args[2:]
    else:
        args += extra
    out = assert_one_message(run(args), 2, message)
    print(f"{case}: {out.strip().splitlines()[-1]}")


def test_a_line_that_is_not_utf8_is_skipped_and_counted_in_training(qwen25_dir, tiny_data, bad_files, tmp_path):
    result = run(_small(qwen25_dir, tiny_data, tmp_path / "run", f"data.train_files={bad_files}/latin1.jsonl",
                        "trainer.max_steps=1", "checkpoint.save_final_model=false", "log.plots=false"))
    assert_one_message(result, 0, f"3 rows, skipped 1 (1 not_utf8); first: {bad_files}/latin1.jsonl:2: line is not "
                                  "UTF-8 text (byte 0xe9 at byte 28 of the line); re-encode the file as UTF-8")


def test_help_config_lists_keys_with_defaults_at_once():
    start = time.perf_counter()
    out = run(["--help-config", "rollout"])
    assert out.returncode == 0
    assert "  rollout.group_size = 8\n      G: responses sampled per (image, question)\n" in out.stdout
    assert "trainer.lr =" not in out.stdout
    assert time.perf_counter() - start < 5, "--help-config must not import torch"
    assert "--help-config" in run(["--help"]).stdout
    bad = run(["--help-config", "rollout.group"])
    assert bad.returncode == 2 and "Did you mean 'rollout.group_size'" in bad.stderr and "Traceback" not in bad.stderr


def test_console_shows_progress_lines_and_the_log_file_the_rest(qwen25_dir, tiny_data, tmp_path):
    """stdout/stderr are pipes here (as in a SLURM log): plain progress lines with an ETA, no \\r bar;
    library chatter (accelerate's per-checkpoint INFO lines, warnings) only in <output_dir>/train.log."""
    out_dir = tmp_path / "run"
    result = run(_small(qwen25_dir, tiny_data, out_dir, "trainer.max_steps=4", "checkpoint.every_steps=2",
                        "log.progress_bar=true", "log.print_every=2", "checkpoint.save_final_model=false",
                        "log.plots=false"))
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert "\r" not in console
    progress = [line for line in console.splitlines() if "rlvr.tracking: step " in line]
    assert [line.split("rlvr.tracking: ")[1].split(" (")[0] for line in progress] == ["step 1/4", "step 2/4",
                                                                                      "step 4/4"]
    assert all(" | elapsed " in line and ", ETA " in line for line in progress)
    log = (out_dir / "train.log").read_text()
    assert "accelerate.checkpointing" in log and "accelerate" not in console.replace("accelerate launch", "")
    assert f"rlvr: full log in {out_dir}/train.log" in console and "saved checkpoint" in log


def test_library_chatter_goes_to_the_log_file_not_the_console(tmp_path):
    """What setup_logging routes where: rlvr's INFO and anyone's errors to the console; warnings.warn
    (transformers' FutureWarnings), transformers' and accelerate's own loggers only to the file."""
    log = tmp_path / "train.log"
    script = f"""
import logging, warnings
from rlvr.logs import setup_logging
setup_logging({str(log)!r})
from transformers.utils import logging as hf_logging
logging.getLogger("rlvr.trainer").info("rlvr info line")
warnings.warn("`past_key_values` is deprecated", FutureWarning)
hf_logging.get_logger("transformers.generation.configuration_utils").warning(
    "The following generation flags are not valid and may be ignored: ['top_k']")
logging.getLogger("accelerate.checkpointing").info("Model weights saved in x")
logging.getLogger("some.library").error("a library error")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    console, text = result.stdout + result.stderr, log.read_text()
    assert "rlvr info line" in console and "a library error" in console
    for chatter in ("past_key_values", "generation flags are not valid", "Model weights saved"):
        assert chatter not in console and chatter in text, chatter
    assert "rlvr info line" in text


def test_the_console_follows_a_replaced_stderr():
    """A stderr replaced and closed after setup (a redirect, a test harness) must not turn the next
    log line into "--- Logging error ---" and a traceback: the console writes to the stderr of now."""
    script = """
import io, logging, sys
from rlvr.logs import setup_logging
real, sys.stderr = sys.stderr, io.StringIO()
setup_logging()
sys.stderr.close()
sys.stderr = real
logging.getLogger("rlvr.synth").warning("after the old stderr closed")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    assert "after the old stderr closed" in result.stderr and "Logging error" not in result.stderr, result.stderr


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_two_processes_is_one_message(qwen25_dir, tiny_data, tmp_path):
    """prompts_per_step=3 on 2 processes: rank 0 says so once, exit 2, no rank prints a traceback.
    (The launcher itself, torchrun inside accelerate launch, still reports any non-zero exit with its
    own ChildFailedError traceback; that one names no rlvr code.)"""
    from tests.launching import run as launch

    result = launch(_small(qwen25_dir, tiny_data, tmp_path / "run", "trainer.prompts_per_step=3"), config="ddp",
                    processes=2, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert out.count("trainer.prompts_per_step=3 does not divide among 2 processes") == 1, out[-3000:]
    assert "exitcode  : 2" in out  # rank 0's exit code, in the launcher's summary
    for block in out.split("Traceback (most recent call last)")[1:]:
        assert "ChildFailedError" in block and "rlvr" not in block.split("ChildFailedError")[0], block[:3000]
