"""Evaluation on a tiny model and tiny data: predictions rlvr.score reads back to the same accuracy,
determinism checked with golds taken from the model's own answers, loading a checkpoint, and the
CLI's errors."""

import dataclasses
import json
import os
import re

import pytest
import torch

from rlvr.config import load_config, save_config
from rlvr.config import EvalConfig
from rlvr.evaluate import Evaluator, main
from rlvr.trained_models import load_trained, resolve_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "demo.yaml")


@pytest.fixture(scope="module")
def val_file(tmp_path_factory):
    from rlvr.devtools.make_demo_data import main as make_data

    out = tmp_path_factory.mktemp("evaldata")
    make_data(["--out", str(out), "--train", "2", "--val", "8"])
    return str(out / "val.jsonl")


def _accuracy(stdout: str) -> float:
    return float(re.search(r"accuracy: ([0-9.]+)", stdout).group(1))


def test_cli_predictions_rescore_to_the_same_accuracy(qwen25_dir, val_file, tmp_path, capsys):
    from rlvr.score import main as score

    out = tmp_path / "eval"
    rc = main(["--model", qwen25_dir, "--data", val_file, "--k", "4", "--config", DEMO, "--out", str(out),
               "rollout.max_new_tokens=6", "reward.num_workers=1"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "pass@1" in printed and "maj@4" in printed and "re-score: python -m rlvr.score" in printed
    metrics = json.load(open(out / "metrics.json"))
    for key in ("eval/pass@1", "eval/pass@2", "eval/pass@4", "eval/maj@4", "eval/greedy", "eval/response_length/mean",
                "eval/outcome/correct", "eval/outcome/no_answer"):
        assert key in metrics, key
    preds = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert len(preds) == 8 * 4 and {p["sample"] for p in preds} == {0, 1, 2, 3}
    assert all(p["response_tokens"] <= 6 and os.path.isfile(p["images"][0]) for p in preds)
    assert os.path.isfile(out / "samples.html")

    # python -m rlvr.score reads the predictions back to the same accuracy, line by line.
    assert score([str(out / "predictions.jsonl"), "--answer-extraction", "last_number", "--workers", "1"]) == 0
    assert _accuracy(capsys.readouterr().out) == pytest.approx(metrics["eval/pass@1"], abs=1e-4)
    scored = [json.loads(line) for line in open(out / "predictions.scored.jsonl")]
    assert [s["reward"] for s in scored] == [p["reward"] for p in preds]
    assert [s["outcome"] for s in scored] == [p["outcome"] for p in preds]
    assert score([str(out / "predictions_greedy.jsonl"), "--answer-extraction", "last_number", "--workers", "1"]) == 0
    assert _accuracy(capsys.readouterr().out) == pytest.approx(metrics["eval/greedy"], abs=1e-4)


def _setup(model_dir, val_file, *overrides):
    from rlvr.data import load_examples
    from rlvr.models import load_model, load_processor
    cfg = load_config(DEMO, [f"model.name_or_path={model_dir}", f"data.val_files={val_file}", "reward.num_workers=1",
                             *overrides])
    processor = load_processor(model_dir, cfg.data.min_pixels, cfg.data.max_pixels)
    examples, _ = load_examples([val_file], cfg.data, processor)
    return cfg, processor, examples, load_model(model_dir, "float32")


def test_evaluation_is_deterministic_and_scores_the_models_own_answers(qwen25_dir, val_file):
    from rlvr.rewards import parse_gold

    cfg, processor, examples, model = _setup(qwen25_dir, val_file, "rollout.max_new_tokens=16")
    evaluator = Evaluator(cfg, processor, examples, EvalConfig(k=3, greedy=True, seed=7))
    model.train()
    rng = torch.get_rng_state()
    first = evaluator.run(model)
    assert torch.equal(torch.get_rng_state(), rng), "evaluation must not move the training run's RNG"
    assert model.training, "the model's mode is restored"
    again = evaluator.run(model)
    assert {k: v for k, v in first.items() if k != "time/eval_s"} == {k: v for k, v in again.items() if k != "time/eval_s"}
    assert first["eval/samples_per_prompt"] == 3 and first["eval/num_prompts"] == 8

    # Golds taken from the model's own answers in sample 0: sampling is seeded by eval.seed
    # alone, so the same samples come again and exactly those become correct.
    own = {}  # prompt id -> (sample, its answer): the first sample with an answer
    for p in evaluator.predictions:
        if p["extracted"] is not None and p["id"] not in own:
            own[p["id"]] = (p["sample"], p["extracted"])
    answered = [e.id for e in examples if e.id in own]
    assert answered, "the tiny model should write some digits in 16 tokens"
    relabelled = [dataclasses.replace(e, answer=own[e.id][1], gold=parse_gold(own[e.id][1])) if e.id in own else e
                  for e in examples]
    rerun = Evaluator(cfg, processor, relabelled, EvalConfig(k=3, greedy=True, seed=7))
    m = rerun.run(model)
    assert [p["reward"] for p in rerun.predictions if p["id"] in own and p["sample"] == own[p["id"]][0]] == \
        [1.0] * len(answered)
    assert m["eval/pass@1"] >= len(answered) / (3 * len(examples)) - 1e-9
    assert m["eval/pass@3"] >= m["eval/pass@1"] and m["eval/pass@3"] >= len(answered) / len(examples) - 1e-9
    assert m["eval/greedy"] == pytest.approx(sum(g["reward"] for g in rerun.greedy_predictions) / len(examples))


def test_schedule_and_max_prompts(qwen25_dir, val_file):
    cfg = load_config(DEMO)
    ev = Evaluator(cfg, None, list(range(8)), EvalConfig(every_steps=50, max_prompts=3))
    assert len(ev.examples) == 3
    assert [s for s in range(1, 121) if ev.due(s, 120)] == [50, 100, 120]
    assert [s for s in range(1, 11) if Evaluator(cfg, None, [1], EvalConfig()).due(s, 10)] == [10]  # at the end only
    assert not Evaluator(cfg, None, [], EvalConfig(every_steps=1)).due(1, 10)  # no validation data
    assert ev.rollout.group_size == 8 and ev.rollout.max_new_tokens == cfg.rollout.max_new_tokens


def test_checkpoint_and_run_folders_resolve_and_load(qwen25_dir, tmp_path):
    from safetensors.torch import save_file

    from rlvr.models import load_model

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_000003"
    ckpt.mkdir(parents=True)
    save_config(load_config(DEMO, [f"model.name_or_path={qwen25_dir}", f"output_dir={run}"]), run / "config.yaml")
    trained = load_model(qwen25_dir, "float32")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)  # stands in for training
    # As the trainer's accelerate checkpoint stores it: under the wrapper's "policy." prefix,
    # tied weights once.
    state = {f"policy.{k}": v.clone() for k, v in trained.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(ckpt / "model.safetensors"))
    (ckpt / "COMPLETE").write_text("3\n")

    source = resolve_model(str(run))  # a run without final/: its latest checkpoint
    assert source.state_dict_file == str(ckpt / "model.safetensors") and source.weights_dir == qwen25_dir
    assert source.run_config == str(run / "config.yaml") and source.label == "step_000003"
    loaded = load_trained(source, "float32", "sdpa", "cpu")
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name

    trained.save_pretrained(run / "final")
    final = resolve_model(str(run))
    assert final.weights_dir == str(run / "final") and final.state_dict_file is None
    assert final.processor_dir == qwen25_dir  # final/ without processor files: the run's base model's


def test_lora_adapter_folder_is_merged_into_its_base(qwen25_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from rlvr.models import load_model

    peft_model = get_peft_model(load_model(qwen25_dir, "float32"),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # fresh adapters are zero; make them change the model
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    source = resolve_model(str(tmp_path / "adapter"))
    assert source.adapter_dir == str(tmp_path / "adapter") and source.weights_dir == qwen25_dir
    loaded = load_trained(source, "float32", "sdpa", "cpu")
    base = load_model(qwen25_dir, "float32")
    changed = 0
    for (name, a), b, c in zip(merged.state_dict().items(), loaded.state_dict().values(), base.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
        changed += not torch.equal(b, c)
    assert changed == 4  # q_proj and v_proj of both layers


def test_cli_errors_say_what_is_wrong(qwen25_dir, val_file, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nothing"), "--data", val_file]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["--model", qwen25_dir, "--data", val_file, "--config", DEMO, "rollout.temprature=0.5"]) == 2
    assert "rollout.temperature" in capsys.readouterr().err  # the nearest valid key
    (tmp_path / "junk").mkdir()
    assert main(["--model", str(tmp_path / "junk"), "--data", val_file]) == 2
    assert "not a Hugging Face model folder" in capsys.readouterr().err


MULTI = '''
import json, sys
from datetime import timedelta
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
sys.path.insert(0, sys.argv[4])
from tests.test_evaluate import _setup
from rlvr.evaluate import EvalConfig, Evaluator

# Without a GPU accelerate picks no backend; gloo gives two real CPU ranks. The timeout makes a hang fail.
acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo", timeout=timedelta(seconds=120))])
assert acc.num_processes == 2
cfg, processor, examples, model = _setup(sys.argv[1], sys.argv[2], "rollout.max_new_tokens=8", "rollout.micro_batch_size=4")
ev = Evaluator(cfg, processor, examples[:5], EvalConfig(k=2, seed=3), accelerator=acc)
metrics = ev.run(model, 1)
if acc.is_main_process:
    json.dump({"metrics": metrics, "ids": [p["id"] for p in ev.predictions]}, open(sys.argv[3], "w"))
from rlvr.distributed import shutdown_distributed
shutdown_distributed()  # as launch/train.py does: gloo torn down by the interpreter can abort the process
# ... and still did, now and then under load ('terminate called without an active exception' after the
# results were written); this script checks the evaluation, so it leaves without the interpreter's teardown
import os
sys.stdout.flush()
os._exit(0)
'''


@pytest.mark.slow
def test_two_processes_split_the_prompts_and_agree_with_one(qwen25_dir, val_file, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "multi.py"
    script.write_text(MULTI)
    out = tmp_path / "multi.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), qwen25_dir, val_file, str(out), ROOT],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    multi = json.load(open(out))
    # 5 prompts over 2 ranks (3 + 2, one padded): every prompt once, in data order
    assert multi["ids"] == [f"val-{i}" for i in range(5) for _ in range(2)]
    assert multi["metrics"]["eval/num_prompts"] == 5
    # per-prompt sampling streams: the same numbers as one process
    cfg, processor, examples, model = _setup(qwen25_dir, val_file, "rollout.max_new_tokens=8",
                                             "rollout.micro_batch_size=4")
    single = Evaluator(cfg, processor, examples[:5], EvalConfig(k=2, seed=3)).run(model, 1)
    for key, value in single.items():
        if key != "time/eval_s":
            assert multi["metrics"][key] == pytest.approx(value), key


# --------------------------------------------------------------------------- rlvr.score on a run's predictions


def test_a_run_trained_with_last_number_scores_the_same_as_its_evaluation(qwen25_dir, val_file, tmp_path, capsys):
    """The demo recipe trains with answer_extraction=last_number; `python -m rlvr.score` on the
    run's evaluation file, without any flag, must use it too (it used to default to boxed)."""
    import subprocess
    import sys

    from rlvr.score import main as score

    run = tmp_path / "run"
    data = os.path.dirname(val_file)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config", DEMO,
         f"model.name_or_path={qwen25_dir}", f"data.train_files={data}/train.jsonl", f"data.val_files={val_file}",
         f"output_dir={run}", "trainer.max_steps=1", "trainer.prompts_per_step=2", "rollout.group_size=2",
         "rollout.max_new_tokens=8", "trainer.micro_batch_size=4", "rollout.micro_batch_size=8", "eval.k=4",
         "log.progress_bar=false", "log.plots=false", "log.samples_every=0", "checkpoint.save_final_model=false",
         "reward.num_workers=1"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [json.loads(line) for line in open(run / "metrics.jsonl")]
    preds = [json.loads(line) for line in open(run / "eval" / "step_000001.jsonl")]
    assert {(p["answer_extraction"], p["rel_tol"]) for p in preds} == {("last_number", load_config(DEMO).reward.rel_tol)}

    assert score([str(run / "eval" / "step_000001.jsonl"), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "answer_extraction=last_number (from the predictions' rows)" in printed
    assert _accuracy(printed) == pytest.approx(row["eval/pass@1"], abs=1e-4)
    scored = [json.loads(line) for line in open(run / "eval" / "step_000001.scored.jsonl")]
    assert [(s["reward"], s["outcome"]) for s in scored] == [(p["reward"], p["outcome"]) for p in preds]
    # Not vacuous: the tiny model writes numbers without \boxed, which boxed extraction finds no answer in.
    assert any(p["outcome"] != "no_answer" for p in preds)
    assert score([str(run / "eval" / "step_000001.jsonl"), "--workers", "1", "--answer-extraction", "boxed"]) == 0
    assert "answer_extraction=boxed (from --answer-extraction)" in capsys.readouterr().out  # the flag still wins
    boxed = [json.loads(line) for line in open(run / "eval" / "step_000001.scored.jsonl")]
    no_answer = lambda rows: sum(r["outcome"] == "no_answer" for r in rows)  # noqa: E731
    assert no_answer(boxed) > no_answer(preds)  # boxed reads another answer, or none, from some of them


def _predictions(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_score_takes_the_extraction_from_the_rows_then_the_runs_config(tmp_path, capsys):
    from rlvr.score import main as score

    lines = [{"completion": "I think it is 7", "answer": "7"}, {"completion": "\\boxed{3} or 4", "answer": "4"}]
    # an older run's file without the fields: RUN/config.yaml says last_number
    run = tmp_path / "run"
    save_config(load_config(DEMO, [f"output_dir={run}", "reward.rel_tol=0.01"]), run / "config.yaml")
    old = _predictions(run / "eval" / "step_000010.jsonl", lines)
    assert score([old, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"answer_extraction=last_number (from {run / 'config.yaml'}), rel_tol=0.01 (from {run / 'config.yaml'})" in out
    assert "accuracy: 1.0000 (2/2)" in out  # the last numbers, 7 and 4
    assert score([old, "--workers", "1", "--answer-extraction", "boxed", "--rel-tol", "1e-6"]) == 0
    out = capsys.readouterr().out
    assert "accuracy: 0.0000 (0/2)" in out and "(from --answer-extraction)" in out  # no box, then box 3

    # the rows' own field beats the config; nothing at all: boxed
    tagged = _predictions(run / "eval" / "tagged.jsonl", [{**r, "answer_extraction": "boxed"} for r in lines])
    assert score([tagged, "--workers", "1"]) == 0
    assert "answer_extraction=boxed (from the predictions' rows)" in capsys.readouterr().out
    bare = _predictions(tmp_path / "elsewhere" / "deep" / "p.jsonl", lines)
    assert score([bare, "--workers", "1"]) == 0
    assert "answer_extraction=boxed (from default), rel_tol=0 (from default)" in capsys.readouterr().out  # the Verifier's

    # rows that disagree, or carry nonsense, are an error that says what to do
    mixed = _predictions(tmp_path / "mixed.jsonl", [{**lines[0], "answer_extraction": "boxed"},
                                                    {**lines[1], "answer_extraction": "last_number"}])
    assert score([mixed]) == 2
    err = capsys.readouterr().err
    assert "different answer_extraction" in err and "line 1" in err and "line 2" in err and "--answer-extraction" in err
    bad = _predictions(tmp_path / "bad.jsonl", [{**lines[0], "answer_extraction": "first_number"}])
    assert score([bad]) == 2
    assert "bad.jsonl:1: answer_extraction='first_number' is not valid; expected one of boxed, last_number" in \
        capsys.readouterr().err
    assert score([bare, "--rel-tol", "-1"]) == 2
    assert "--rel-tol -1.0 is not valid" in capsys.readouterr().err
    assert score([bare, "--rel-tol", "1.5"]) == 2  # the verifier takes [0, 1): a message, not its ValueError
    assert "--rel-tol 1.5 is not valid; expected a number in [0, 1)" in capsys.readouterr().err
