"""Shared fixtures: tiny random models and small generated data. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _vllm_installed() -> bool:
    # pytest puts tests/ on sys.path, where tests/vllm is found as a namespace package (no origin)
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


# tests/vllm run in their own environment (`make test-vllm`: vLLM pins an older transformers than
# the project's). Where vllm is not installed they are not collected at all, not skipped file by file.
if not _vllm_installed():
    collect_ignore = ["vllm"]


def pytest_report_header(config):
    if not _vllm_installed():
        return "tests/vllm: not collected, vllm is not installed here (`make test-vllm` runs them in .venv-vllm)"


@pytest.fixture(scope="session", params=["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_5"])
def tiny_model_dir(request, tmp_path_factory) -> str:
    from rlvr.devtools.make_tiny_model import make_tiny_model

    return make_tiny_model(request.param, str(tmp_path_factory.mktemp(request.param)))


@pytest.fixture(scope="session")
def qwen25_dir(tmp_path_factory) -> str:
    from rlvr.devtools.make_tiny_model import make_tiny_model

    return make_tiny_model("qwen2_5_vl", str(tmp_path_factory.mktemp("qwen25")))


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def save_image(path, size=(64, 64), colour=(200, 30, 30)) -> str:
    Image.new("RGB", size, colour).save(path)
    return str(path)


