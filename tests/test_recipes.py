"""Every recipe in recipes/ loads and passes the start-up checks."""

import glob
import os

import pytest

from rlvr.config import load_config, check_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml"))
                 + glob.glob(os.path.join(ROOT, "recipes", "tools", "*.yaml")))


def test_there_are_recipes():
    assert any(r.endswith("demo.yaml") for r in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_loads_and_validates(path):
    cfg = load_config(path, [])
    check_config(cfg)
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    assert first.startswith("#"), "a recipe starts with a comment giving the command that runs it"
