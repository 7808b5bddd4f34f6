"""Setup of the vLLM tests, which run only in the vLLM environment: `make test-vllm` (.venv-vllm,
requirements/lock-vllm.txt). tests/conftest.py leaves this folder out where vllm is not installed.

Before any test imports vllm, ``prepare`` sets vLLM's environment (engine core in this process,
a 1 GiB CPU KV cache, no thread pinning) and makes the CPU wheel's CUDA torchvision importable,
as the engine does itself (rlvr.rollout.vllm_env). torch's thread count follows OMP_NUM_THREADS
where it is set (`make test-vllm` sets 1: with 2 threads on a loaded 2-core machine vLLM's
timings varied tenfold).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from rlvr.devtools.make_tiny_model import FAMILY_NAMES
from rlvr.rollout.vllm_env import prepare

VLLM_INSTALLED = getattr(importlib.util.find_spec("vllm"), "origin", None) is not None  # not tests/vllm itself
if VLLM_INSTALLED:
    prepare()
if os.environ.get("OMP_NUM_THREADS", "").isdigit():
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


def pytest_configure(config):
    if not VLLM_INSTALLED:  # these files named explicitly where vllm is missing
        pytest.exit("tests/vllm need vLLM, which is not installed in this environment: run `make test-vllm` "
                    "(it creates .venv-vllm from requirements/lock-vllm.txt)", returncode=4)


@pytest.fixture(scope="session", params=FAMILY_NAMES)
def vllm_tiny_model_dir(request, tmp_path_factory) -> str:
    """A tiny random model of each family, with head sizes vLLM's CPU kernels accept."""
    from rlvr.devtools.make_tiny_model import make_tiny_model, vllm_text_sizes

    family = request.param
    return make_tiny_model(family, str(tmp_path_factory.mktemp(f"vllm-{family}")), text=vllm_text_sizes(family))
