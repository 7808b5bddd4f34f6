"""Each family's realistic recipe loads, validates, and starts on that family's tiny model.

The recipes name 7-9B hub checkpoints; here only the sizes change (model, data, batch),
every other setting (loss, taus, aggregation, minibatches, gradient checkpointing, pixel
budget) runs as written, for one step of ``launch/train.py``.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

from rlvr.config import load_config, check_config
from rlvr.devtools.make_tiny_model import FAMILY_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "qwen*.yaml")))
# hub id prefix -> family; the longest matching prefix wins ("Qwen/Qwen2.5-VL" before "Qwen/Qwen2")
HUB_FAMILIES = {"Qwen/Qwen2-VL": "qwen2_vl", "Qwen/Qwen2.5-VL": "qwen2_5_vl", "Qwen/Qwen3-VL": "qwen3_vl",
                "Qwen/Qwen3.5": "qwen3_5"}


def family_of_recipe(path: str) -> str:
    name = load_config(path, []).model.name_or_path
    prefixes = [p for p in HUB_FAMILIES if name.startswith(p)]
    assert prefixes, f"{path}: model.name_or_path={name!r} is not a known family's hub id"
    return HUB_FAMILIES[max(prefixes, key=len)]


def test_every_family_has_a_recipe():
    assert sorted({family_of_recipe(p) for p in RECIPES}) == sorted(FAMILY_NAMES)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Demo data and one tiny model per family, made on first use."""
    from rlvr.devtools.make_demo_data import main as make_data
    from rlvr.devtools.make_tiny_model import make_tiny_model

    root = tmp_path_factory.mktemp("recipe-assets")
    make_data(["--out", str(root / "data"), "--train", "8", "--val", "2"])
    models: dict[str, str] = {}

    def model(family: str) -> str:
        if family not in models:
            models[family] = make_tiny_model(family, str(root / family))
        return models[family]

    return str(root / "data"), model


def small_overrides(model_dir: str, data_dir: str, out_dir: str) -> list[str]:
    return [
        f"model.name_or_path={model_dir}", f"data.train_files=[{data_dir}/train.jsonl]", "data.val_files=[]",
        "data.question_key=question", f"output_dir={out_dir}",
        "trainer.max_steps=1", "trainer.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
        "trainer.num_minibatches=2", "trainer.micro_batch_size=2", "rollout.micro_batch_size=4",
        "trainer.warmup_steps=0", "checkpoint.save_final_model=false", "log.wandb=false", "log.progress_bar=false",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_recipe_starts_on_its_family_tiny_model(recipe, assets, tmp_path):
    data_dir, model = assets
    family = family_of_recipe(recipe)
    overrides = small_overrides(model(family), data_dir, str(tmp_path / "run"))
    cfg = load_config(recipe, overrides)
    check_config(cfg)
    assert cfg.algorithm.loss == "sapo" and (cfg.algorithm.tau_pos, cfg.algorithm.tau_neg) == (1.0, 1.05)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ROOT, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config", recipe,
                             *overrides], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (row,) = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    # The mismatch metric is logged every step, and the family's rollout log-probs are exact.
    assert row["rollout/logprob_diff_max"] < 1e-4, row
    assert row["rollout/logprob_diff_frac_1e-3"] == 0.0, row
