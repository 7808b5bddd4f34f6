"""python -m rlvr.validate catches each problem it lists, on purpose-made bad configs, data and models."""

import json
import os
import shutil

import pytest

from rlvr.config import load_config
from rlvr.validate import FAIL, OK, WARN, check_setup, estimate_memory, preflight
from rlvr.validate.cli import main
from tests.conftest import save_image, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "demo.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Good train/val files, and a file with one bad row of each kind."""
    d = tmp_path_factory.mktemp("validate-data")
    (d / "img").mkdir()
    for i in range(4):
        save_image(d / "img" / f"{i}.png", (112, 112), (40 * i, 100, 200))
    (d / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    good = [{"id": f"g{i}", "question": "Which digit?", "answer": str(i), "images": [f"img/{i}.png"]} for i in range(4)]
    bad = good[:2] + [
        {"id": "missing", "question": "Q?", "answer": "1", "images": ["img/nope.png"]},
        {"id": "corrupt", "question": "Q?", "answer": "1", "images": ["img/corrupt.png"]},
        {"id": "gold", "question": "Q?", "answer": "seven", "images": ["img/0.png"]},
        {"id": "empty", "question": " ", "answer": "1"},
        "{not json",
    ]
    return {"train": write_jsonl(d / "train.jsonl", good), "val": write_jsonl(d / "val.jsonl", good[:2]),
            "bad": write_jsonl(d / "bad.jsonl", bad), "dir": str(d)}


def run(model, data, tmp_path, *overrides, **kw):
    base = [f"model.name_or_path={model}", f"data.train_files={data['train']}", f"data.val_files={data['val']}",
            f"output_dir={tmp_path / 'run'}", "trainer.prompts_per_step=4"]
    return check_setup(DEMO, base + list(overrides), **kw)


def lines(report, status=FAIL, section=None):
    return [c.message for c in report.checks if c.status == status and (section is None or c.section == section)]


def test_good_setup_passes_with_a_readable_report(qwen25_dir, data, tmp_path, capsys):
    report = run(qwen25_dir, data, tmp_path)
    assert not report.failed, report.render()
    text = report.render()
    for heading in ("Config", "Rewards", "Model and processor", "Data", "Memory per GPU (estimate)"):
        assert f"\n{heading}\n" in text
    assert any("4 rows, 4 usable, none skipped" in m for m in lines(report, OK, "Data"))
    assert any("prompt tokens (image + text): min" in m for m in lines(report, OK, "Data"))
    assert text.rstrip().endswith("No problems found (0 warnings).")
    # the CLI prints the same and exits 0
    argv = ["--config", DEMO, f"model.name_or_path={qwen25_dir}", f"data.train_files={data['train']}",
            f"data.val_files={data['val']}", f"output_dir={tmp_path / 'run'}", "trainer.prompts_per_step=4"]
    assert main(argv) == 0
    assert "No problems found" in capsys.readouterr().out


def test_config_errors(qwen25_dir, data, tmp_path):
    report = run(qwen25_dir, data, tmp_path, "rollout.group_sise=4")
    assert report.failed and "Did you mean 'rollout.group_size'" in lines(report)[0]
    assert {c.section for c in report.checks} == {"Config"}  # nothing else can be checked
    report = run(qwen25_dir, data, tmp_path, "trainer.micro_batch_size=7")
    assert any("does not divide" in m for m in lines(report, section="Config"))
    assert lines(report, OK, "Rewards")  # the other checks still run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    report = run(qwen25_dir, data, tmp_path)
    assert any("already holds a run" in m for m in lines(report, section="Config"))
    missing = check_setup(str(tmp_path / "nope.yaml"), [])
    assert missing.failed and "nope.yaml" in lines(missing)[0]


BAD_REWARDS = """
def as_string(completions, answers, **columns):
    return "1.0"

def too_few(completions, answers, **columns):
    return [1.0]

def not_finite(completions, answers, **columns):
    return [float("nan")] * len(completions)

def no_columns(completions, answers):
    return [0.0] * len(completions)
"""


@pytest.mark.parametrize("name, expected", [
    ("no_such_module_xyz:reward", "not found"),
    ("rlvr.rewards:numeric_rewrd", "did you mean 'numeric_reward'"),
    ("bad_rewards_fixture:as_string", "returned '1.0' for 2 completions"),
    ("bad_rewards_fixture:too_few", "returned [1.0] for 2 completions"),
    ("bad_rewards_fixture:not_finite", "must return a list of 2 finite floats"),
    ("bad_rewards_fixture:no_columns", "add **columns to the signature"),
])
def test_reward_functions_must_import_and_return_floats(qwen25_dir, data, tmp_path, monkeypatch, name, expected):
    (tmp_path / "bad_rewards_fixture.py").write_text(BAD_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    report = run(qwen25_dir, data, tmp_path, f"reward.functions=[{{name: '{name}'}}]")
    problems = lines(report, section="Rewards")
    assert len(problems) == 1 and expected in problems[0], problems


def test_bad_rows_are_counted_by_reason_with_examples(qwen25_dir, data, tmp_path):
    report = run(qwen25_dir, data, tmp_path, f"data.train_files={data['bad']}")
    problems = "\n".join(lines(report, section="Data"))
    assert "7 rows, 2 usable, 5 skipped" in problems
    for reason, where in [("missing_image", "nope.png"), ("corrupt_image", "corrupt.png"), ("bad_gold", "'seven'"),
                          ("empty_question", "id empty"), ("bad_json", "bad.jsonl:7")]:
        assert f"1 {reason}" in problems and where in problems, reason
    assert any("gold answer(s) do not parse" in m for m in lines(report, WARN, "Data"))
    # accepting some skipped rows turns the problem into a warning
    lenient = run(qwen25_dir, data, tmp_path, f"data.train_files={data['bad']}", allow_skipped=0.8)
    assert not lenient.failed and any("5 skipped" in m for m in lines(lenient, WARN, "Data"))
    strict = run(qwen25_dir, data, tmp_path, f"data.train_files={data['bad']}", "data.strict=true", allow_skipped=0.8)
    assert any("data.strict=true" in m for m in lines(strict, section="Data"))


def test_missing_data_file_and_prompt_budget(qwen25_dir, data, tmp_path):
    report = run(qwen25_dir, data, tmp_path, f"data.val_files={tmp_path / 'gone.jsonl'}")
    assert any("data file not found" in m for m in lines(report, section="Data"))
    report = run(qwen25_dir, data, tmp_path, "data.max_prompt_tokens=30")
    problems = "\n".join(lines(report, section="Data"))
    assert "prompt_too_long" in problems and "over data.max_prompt_tokens=30" in problems


def broken_model(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.load(open(os.path.join(dst, "config.json")))
    for key, value in changes.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    return str(dst)


@pytest.mark.parametrize("change, expected", [
    ({"image_token_id": 5}, "model config says image_token_id=5"),
    ({"vision_start_token_id": 9}, "vision_start_token_id=9"),
    ({"text_config.vocab_size": 300}, "the tokenizer has 400 tokens but the model's embedding has 300 rows"),
    ({"vision_config.patch_size": 16}, "patch_size=14 but the vision tower has patch_size=16"),
    ({"text_config.max_position_embeddings": 200}, "exceeds the model's 200 positions"),
    ({"model_type": "llava"}, "not supported"),
])
def test_processor_and_model_must_agree(qwen25_dir, data, tmp_path, change, expected):
    model = broken_model(qwen25_dir, tmp_path / "model", **change)
    problems = lines(run(model, data, tmp_path), section="Model and processor")
    assert any(expected in m for m in problems), problems


def test_missing_model_or_processor(qwen25_dir, data, tmp_path):
    report = run(str(tmp_path / "no-model"), data, tmp_path)
    assert any("no such folder" in m for m in lines(report, section="Model and processor"))
    # without a processor the data is still checked, the cheap way
    assert lines(report, OK, "Data") or lines(report, WARN, "Data")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(os.path.join(qwen25_dir, "config.json"), bare / "config.json")
    report = run(str(bare), data, tmp_path)
    assert any("cannot load the processor" in m for m in lines(report, section="Model and processor"))


def test_memory_estimate_by_hand_and_budget(qwen25_dir, data, tmp_path):
    from rlvr.validate import count_parameters, load_model_config

    config = load_model_config(qwen25_dir)
    cfg = load_config(DEMO)
    total, trainable, _ = count_parameters(config, False, 0)
    gib = 1024**3
    plain = estimate_memory(cfg, config, num_gpus=1, zero_stage=0)
    # float32 (model.dtype=auto loads float32): 4 bytes weights + 4 gradients + 8 AdamW moments
    assert plain.weights_gib * gib == pytest.approx(4 * total)
    assert plain.grads_gib * gib == pytest.approx(4 * trainable)
    assert plain.optimizer_gib * gib == pytest.approx(8 * trainable)
    zero3 = estimate_memory(cfg, config, num_gpus=4, zero_stage=3)
    # bf16 weights and gradients, 12 bytes of fp32 optimizer state, all split over 4 GPUs
    assert zero3.states_gib * gib == pytest.approx((2 * total + 2 * trainable + 12 * trainable) / 4)
    zero1 = estimate_memory(cfg, config, num_gpus=4, zero_stage=1)
    assert zero1.states_gib * gib == pytest.approx(2 * total + 2 * trainable + 12 * trainable / 4)
    offloaded = estimate_memory(cfg, config, num_gpus=4, zero_stage=3, offload_optimizer=True, offload_params=True)
    assert offloaded.states_gib * gib == pytest.approx(2 * trainable / 4)  # only gradient shards stay on the GPU
    frozen = estimate_memory(load_config(DEMO, ["model.freeze_vision_tower=true"]), config)
    assert frozen.trainable < plain.trainable and frozen.params == plain.params
    lora = estimate_memory(cfg, config, lora_rank=4)
    assert 0 < lora.trainable < plain.trainable / 10
    with_ref = estimate_memory(load_config(DEMO, ["algorithm.kl_coef=0.1"]), config)
    assert with_ref.reference_gib == pytest.approx(plain.weights_gib)
    # one fp32 chunk of logits and its gradient: 8 bytes x vocab x rows, rows = micro-batch x chunk positions,
    # or at most the token budget
    vocab = config.get_text_config().vocab_size
    t = cfg.trainer
    assert plain.logits_chunk_gib * gib == pytest.approx(8 * vocab * t.micro_batch_size * t.logprob_chunk_size)
    budget = estimate_memory(load_config(DEMO, ["trainer.micro_batch_tokens=3000"]), config)
    assert budget.logits_chunk_gib * gib == pytest.approx(8 * vocab * 3000)
    # against a budget
    report = run(qwen25_dir, data, tmp_path, gpu_memory_gb=0.001)
    assert any("training cannot fit" in m for m in lines(report, section="Memory per GPU (estimate)"))
    assert not run(qwen25_dir, data, tmp_path, gpu_memory_gb=80).failed


def test_preflight_is_the_cheap_part(qwen25_dir, data, tmp_path):
    cfg = load_config(DEMO, [f"model.name_or_path={qwen25_dir}", f"data.train_files={data['bad']}"])
    report = preflight(cfg)
    assert not report.failed, report.render()  # bad rows are training's loader's business
    assert {c.section for c in report.checks} == {"Rewards", "Rollout engine", "Model and processor",
                                                     "Memory per GPU (estimate)"}
    cfg.reward.functions[0].name = "rlvr.rewards:no_such_reward"
    assert preflight(cfg).failed


def test_accelerate_config_sets_gpus_stage_and_offload(qwen25_dir, data, tmp_path, capsys):
    acc = tmp_path / "zero3_offload.yaml"
    acc.write_text("distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 3\n  offload_optimizer_device: cpu\n"
                   "  offload_param_device: none\nnum_processes: 8\n")
    argv = ["--config", DEMO, f"model.name_or_path={qwen25_dir}", f"data.train_files={data['train']}",
            f"data.val_files={data['val']}", f"output_dir={tmp_path / 'run'}", "trainer.prompts_per_step=32",
            "--accelerate-config", str(acc)]  # 4 prompts x 16 per rank fill a micro-batch of 64 on 8 processes
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ZeRO-3 over 8 GPU(s)" in out and "optimizer state offloaded to CPU memory" in out


def test_cli_exit_code_and_usage(qwen25_dir, data, tmp_path, capsys):
    argv = ["--config", DEMO, f"model.name_or_path={qwen25_dir}", f"data.train_files={data['bad']}",
            f"data.val_files={data['val']}", f"output_dir={tmp_path / 'run'}"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "fix the FAIL lines above before launching" in out
    with pytest.raises(SystemExit):
        main(["--config", DEMO, "not-an-override"])


# ---------------------------------------------------------------- validate agrees with training


def test_num_processes_gives_trainings_split_check(qwen25_dir, data, tmp_path, capsys, monkeypatch):
    """prompts_per_step=3: fine on 1 or 3 processes, a FAIL on 2, as training would stop there."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["--config", DEMO, f"model.name_or_path={qwen25_dir}", f"data.train_files={data['train']}",
            f"data.val_files={data['val']}", f"output_dir={tmp_path / 'run'}", "trainer.prompts_per_step=3",
            "trainer.micro_batch_size=16"]
    for processes, code in (("1", 0), ("3", 0), ("2", 1)):
        assert main(argv + ["--num-processes", processes]) == code, processes
        out = capsys.readouterr().out
        assert ("trainer.prompts_per_step=3 does not divide among 2 processes" in out) == (processes == "2")
        assert f"cross-field checks for {processes} process" in out or processes == "2"
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside a launcher: its process count
    assert main(argv) == 1 and "does not divide among 2 processes" in capsys.readouterr().out


def test_resume_auto_reports_what_resume_will_do(qwen25_dir, data, tmp_path):
    from rlvr.config import save_config

    out = tmp_path / "run"
    save_config(load_config(DEMO, [f"model.name_or_path={qwen25_dir}", f"data.train_files={data['train']}",
                                   f"data.val_files={data['val']}", f"output_dir={out}",
                                   "trainer.prompts_per_step=4"]), out / "config.yaml")
    ckpt = out / "checkpoints" / "step_000002"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"step": 2}')
    (ckpt / "COMPLETE").write_text("2\n")
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert any("already holds a run" in m for m in lines(run(qwen25_dir, data, tmp_path), section="Config"))
    report = run(qwen25_dir, data, tmp_path, "resume=auto", "trainer.max_steps=300")
    assert not report.failed, report.render()
    (message,) = [m for m in lines(report, OK, "Config") if m.startswith("resume=auto")]
    assert message.startswith(f"resume=auto resumes from {ckpt} at step 2 of 300, with 1 change(s) to {out}/config.yaml")
    assert "trainer.max_steps: 250 -> 300" in message
    report = run(qwen25_dir, data, tmp_path, "resume=auto", "algorithm.loss=grpo")
    (refused,) = lines(report, FAIL, "Config")
    assert "algorithm.loss: 'sapo' -> 'grpo'" in refused and "Refused: algorithm.loss" in refused
    report = run(qwen25_dir, data, tmp_path, "resume=auto", "trainer.max_steps=2")
    assert not report.failed and any("the run is finished" in m for m in lines(report, WARN, "Config"))


def test_parameter_count_matches_training(qwen25_dir, data, tmp_path):
    """The tiny Qwen2.5-VL ties its output head to the input embeddings: counted once, as training counts."""
    from rlvr.models import load_model
    from rlvr.validate import count_parameters, load_model_config

    model = load_model(qwen25_dir)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    training = sum(p.numel() for p in model.parameters())
    assert count_parameters(load_model_config(qwen25_dir), False, 0)[0] == training
    report = run(qwen25_dir, data, tmp_path)
    assert any(m.startswith(f"{training / 1e3:.2f}K parameters") for m in lines(report, "info"))


def test_report_never_breaks_a_flag_or_a_path():
    from rlvr.validate import Report

    for pad in range(0, 90, 3):
        report = Report()
        report.add("Data", FAIL, "x " * pad + "accept it with --allow-skipped 0.25, or fix data/my-train-set.jsonl")
        text = report.render()
        assert "--allow-skipped" in text and "data/my-train-set.jsonl" in text, text


def test_a_line_that_is_not_utf8_is_a_counted_bad_row(qwen25_dir, data, tmp_path):
    from pathlib import Path

    path = Path(data["dir"]) / "latin1.jsonl"  # next to the images its rows name
    good = open(data["train"], "rb").read().splitlines()
    path.write_bytes(b"\n".join(good[:2] + ['{"id": "l", "question": "Qu\xe9?", "answer": "2"}'.encode("latin-1")]
                                + good[2:]) + b"\n")
    rows = lines(run(qwen25_dir, data, tmp_path, f"data.train_files={path}"), section="Data")
    assert len(rows) == 1 and "5 rows, 4 usable, 1 skipped (20.0%): 1 not_utf8" in rows[0]
    assert f"not_utf8: {path}:3: line is not UTF-8 text (byte 0xe9 at byte 28 of the line)" in rows[0]


def test_with_tools_the_prompt_budget_counts_the_tools_section_and_shaping_rewards_pass(qwen25_dir, data, tmp_path):
    import re

    from rlvr.agent.calls import tools_system_prompt
    from rlvr.agent.rollout import build_registry
    from rlvr.config.tools import ToolsConfig
    from rlvr.models import load_processor

    def max_prompt(report):
        text = next(m for m in lines(report, OK, "Data") if m.startswith("train prompt tokens"))
        return int(re.search(r"max (\d+)", text).group(1))

    plain = max_prompt(run(qwen25_dir, data, tmp_path, "data.max_prompt_tokens=4096"))
    rewards = ("reward.functions=[{name: rlvr.rewards:numeric_reward}, {name: rlvr.rewards:tool_format, weight: 0.1}, "
               "{name: rlvr.rewards:tool_call_cost, weight: 0.05}]")
    report = run(qwen25_dir, data, tmp_path, "data.max_prompt_tokens=4096", "tools.names=[zoom_in]", rewards)
    assert not report.failed, report.render()
    # the system turn the tools add, counted by hand with the same tokenizer
    system = tools_system_prompt(build_registry(ToolsConfig(names=["zoom_in"])).schemas())
    tokenizer = load_processor(qwen25_dir).tokenizer
    turn = tokenizer.apply_chat_template([{"role": "system", "content": system}], tokenize=False)
    assert max_prompt(report) == plain + len(tokenizer.encode(turn, add_special_tokens=False))
    assert len(lines(report, OK, "Rewards")) == 3
