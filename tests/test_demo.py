"""The demo learns: a tiny random Qwen2.5-VL reads the digit a colour stands for (slow: minutes)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_recipe_learns_end_to_end(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ROOT}
    model, data, out = tmp_path / "model", tmp_path / "data", tmp_path / "run"
    py = sys.executable
    subprocess.run([py, "-m", "rlvr.tools.make_tiny_model", "--family", "qwen2_5_vl", "--out", str(model)],
                   check=True, capture_output=True, env=env, cwd=ROOT)
    subprocess.run([py, "-m", "rlvr.tools.make_demo_data", "--out", str(data)], check=True, capture_output=True,
                   env=env, cwd=ROOT)
    result = subprocess.run(
        [py, os.path.join(ROOT, "launch", "train.py"), "--config", os.path.join(ROOT, "recipes", "demo.yaml"),
         f"model.name_or_path={model}", f"data.train_files={data}/train.jsonl", f"data.val_files={data}/val.jsonl",
         f"output_dir={out}", "log.progress_bar=false"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rewards = [json.loads(line)["reward/mean"] for line in open(out / "metrics.jsonl")]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"demo reward: first 5 steps {first:.3f}, last 5 steps {last:.3f}, {len(rewards)} steps")
    assert first < 0.3, "a random model should start near chance"
    assert last >= 0.8, f"the demo did not learn: last-5 mean reward {last:.3f}"
