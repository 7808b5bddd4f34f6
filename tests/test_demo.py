"""The demo learns: a tiny random Qwen2.5-VL reads the digit a colour stands for (slow: minutes).

The demo recipe must also learn a harder variant of its task (the digit's colour in a centred
square framed by a random colour, the question worded three ways) on a seed where it used to
stall with a colour locked onto a wrong digit: last-5 reward 0.352 without the entropy bonus,
0.976 with it (both with the earlier Gumbel-max sampler); 0.707 with it and the final
inverse-CDF sampler, whose random draws differ. The full grid (5 seeds, two distractor
variants) is ``benchmarks/learning_seeds.py``.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "model"
    subprocess.run([sys.executable, "-m", "rlvr.devtools.make_tiny_model", "--family", "qwen2_5_vl", "--out", str(path)],
                   check=True, capture_output=True, env=ENV, cwd=ROOT)
    return path


def _train(model, data, out, *overrides):
    """Run the demo recipe on ``data``; the reward/mean of every step."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config", os.path.join(ROOT, "recipes", "demo.yaml"),
         f"model.name_or_path={model}", f"data.train_files={data}/train.jsonl", f"output_dir={out}",
         "log.progress_bar=false", *overrides],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line)["reward/mean"] for line in open(out / "metrics.jsonl")]


@pytest.mark.slow
def test_demo_recipe_learns_end_to_end(tmp_path, model):
    data, out = tmp_path / "data", tmp_path / "run"
    subprocess.run([sys.executable, "-m", "rlvr.devtools.make_demo_data", "--out", str(data)], check=True,
                   capture_output=True, env=ENV, cwd=ROOT)
    rewards = _train(model, data, out, f"data.val_files={data}/val.jsonl")
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"demo reward: first 5 steps {first:.3f}, last 5 steps {last:.3f}, {len(rewards)} steps")
    assert first < 0.3, "a random model should start near chance"
    assert last >= 0.8, f"the demo did not learn: last-5 mean reward {last:.3f}"


@pytest.mark.slow
def test_demo_recipe_learns_a_distractor_variant_where_it_used_to_stall(tmp_path, model):
    data, out, seed = tmp_path / "data", tmp_path / "run", 3
    subprocess.run([sys.executable, "-m", "rlvr.devtools.make_demo_data", "--out", str(data), "--distractor", "border",
                    "--phrasings", "3", "--val", "1"], check=True, capture_output=True, env=ENV, cwd=ROOT)
    rewards = _train(model, data, out, "data.val_files=[]", f"trainer.seed={seed}", "checkpoint.save_final_model=false")
    last = sum(rewards[-5:]) / 5
    print(f"border distractor, seed {seed}: last 5 steps {last:.3f}")
    assert last >= 0.6, f"seed {seed}: the demo recipe stalled on the distractor variant (last-5 mean reward {last:.3f})"
