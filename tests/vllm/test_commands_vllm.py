"""The standalone commands with ``rollout.engine=vllm``: validate checks the setup, evaluate samples with vLLM.

Both prepare vLLM's environment before loading the processor (on this CPU build transformers'
image processing imports a torchvision that only loads once ``rlvr.rollout.vllm_env`` ran).
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from rlvr.devtools.make_demo_data import main as make_data
    from rlvr.devtools.make_tiny_model import make_tiny_model, vllm_text_sizes

    root = tmp_path_factory.mktemp("commands")
    model = make_tiny_model("qwen2_5_vl", str(root / "model"), text=vllm_text_sizes("qwen2_5_vl"))
    make_data(["--out", str(root / "data"), "--train", "8", "--val", "4"])
    return root, model


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=900)


def test_validate_checks_a_vllm_run(setup):
    root, model = setup
    out = _run("rlvr.validate", "--config", os.path.join(ROOT, "recipes", "demo.yaml"), "rollout.engine=vllm",
               f"model.name_or_path={model}", f"data.train_files={root}/data/train.jsonl",
               f"data.val_files={root}/data/val.jsonl", f"output_dir={root}/run")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "rollout.engine=vllm (vLLM 0.32" in out.stdout and "No problems found" in out.stdout, out.stdout


def test_evaluate_with_vllm_gives_the_hf_engines_greedy_answers(setup):
    """Greedy decoding agrees between the engines on an fp32 model, so the two runs' greedy completions match."""
    root, model = setup
    completions = {}
    for engine in ("hf", "vllm"):
        args = ["--model", model, "--data", f"{root}/data/val.jsonl", "--config", os.path.join(ROOT, "recipes", "demo.yaml"),
                "--k", "2", "--out", f"{root}/eval-{engine}", f"rollout.engine={engine}"]
        # rollout.engine=hf does not prepare vLLM's environment, which this CPU build's torchvision needs
        # for any processor: the reference run does it first, as tests/vllm/conftest.py does for the tests
        script = ("import sys; from rlvr.rollout.vllm_env import prepare; prepare(); from rlvr.evaluate import main; "
                  f"sys.exit(main({args!r}))")
        out = _run("rlvr.evaluate", *args) if engine == "vllm" else subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        with open(f"{root}/eval-{engine}/predictions.jsonl") as f:
            assert len(f.readlines()) == 4 * 2  # every prompt, k samples
        with open(f"{root}/eval-{engine}/predictions_greedy.jsonl") as f:
            completions[engine] = [json.loads(line)["completion"] for line in f]
    assert len(completions["hf"]) == 4 and completions["hf"] == completions["vllm"]
