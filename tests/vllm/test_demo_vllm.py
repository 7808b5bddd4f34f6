"""The demo learns with rollout.engine=vllm on CPU, to the same target as with the HF engine (slow: minutes).

tests/test_demo.py's task and recipe (recipes/demo.yaml) with the rollouts sampled by an
in-process vLLM engine that is sent the policy's weights after every update, through the training
entry point as a user runs it. The tiny model has hidden size 128 (head size 32, the smallest
vLLM's CPU attention runs; the demo's default 64 gives 16): ``make_tiny_model --family qwen2_5_vl
--hidden-size 128``. 100 of the recipe's 250 steps, without evaluations, to keep `make test-vllm`
short: measured, the last-5 mean reward was 0.99 at step 100 (first 5: 0.02; 0.8 reached near
step 40; the full 250 steps reach 1.0), and the sampler's log-probs stayed within 3e-5 of the
training forward's.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_demo_recipe_learns_with_the_vllm_engine(tmp_path):
    from rlvr.devtools.make_tiny_model import make_tiny_model, vllm_text_sizes

    model, data, out = tmp_path / "model", tmp_path / "data", tmp_path / "run"
    make_tiny_model("qwen2_5_vl", str(model), text=vllm_text_sizes("qwen2_5_vl"))
    subprocess.run([sys.executable, "-m", "rlvr.devtools.make_demo_data", "--out", str(data)], check=True,
                   capture_output=True, env=ENV, cwd=ROOT)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config", os.path.join(ROOT, "recipes", "demo.yaml"),
         f"model.name_or_path={model}", f"data.train_files={data}/train.jsonl", "data.val_files=[]",
         f"output_dir={out}", "log.progress_bar=false", "rollout.engine=vllm", "trainer.max_steps=100",
         "checkpoint.save_final_model=false"],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    rewards = [row["reward/mean"] for row in rows]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"demo with vLLM: reward first 5 steps {first:.3f}, last 5 steps {last:.3f}, {len(rewards)} steps")
    assert len(rows) == 100 and all("rollout/sync_s" in row for row in rows), "the engine was not sent every update"
    # the engine samples from the weights it was sent, so its log-probs are the training forward's
    assert max(row["rollout/logprob_diff_max"] for row in rows) < 1e-3
    assert first < 0.3, "a random model should start near chance"
    assert last >= 0.8, f"the demo did not learn with the vLLM engine: last-5 mean reward {last:.3f}"
