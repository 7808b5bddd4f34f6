"""benchmarks/step_vs_trl.py runs end to end on tiny sizes and reports both trainers' medians (slow: TRL import and two trainers)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None,
                    reason="trl is not installed; the benchmark compares against it (pip install -e '.[bench]')")
def test_step_vs_trl_quick():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_vs_trl.py"), "--quick"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout
    assert proc.returncode == 0, f"benchmark failed (exit {proc.returncode}):\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    medians = {name: float(m.group(1)) for name in ("TRL", "rlvr")
               if (m := re.search(rf"^{name}\s+median s/step: ([0-9.]+)$", out, re.MULTILINE))}
    assert set(medians) == {"TRL", "rlvr"}, f"medians missing from the output:\n{out}"
    assert all(v > 0 for v in medians.values()), medians
    ratio = re.search(r"^ratio TRL/rlvr: ([0-9.]+)$", out, re.MULTILINE)
    assert ratio and float(ratio.group(1)) > 0, f"no ratio in the output:\n{out}"
    # the script checks both sides did the same work; the table it prints says so
    assert "work done in the first step (checked)" in out


def _has(*modules: str) -> bool:
    """Installed packages, not namespace folders of the same name (tests/vllm is one)."""
    specs = [importlib.util.find_spec(m) for m in modules]
    return all(spec is not None and spec.origin is not None for spec in specs)


def _run(script: str, *args: str, timeout: int = 900) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, \
        f"{script} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not _has("trl", "vllm"),
                    reason="needs trl and vllm: the vLLM environment with trl installed (pip install trl==1.16.0)")
def test_step_vs_trl_quick_vllm_engine():
    out = _run("step_vs_trl.py", "--quick", "--engine", "vllm", "--threads", "1")
    assert "rlvr vllm" in out, out  # rlvr sampled with the vLLM engine
    assert "work done in the first step (checked)" in out
    sync = re.search(r"^  sync\s+([0-9.]+)\s+([0-9.]+)", out, re.MULTILINE)
    assert sync and float(sync.group(1)) == 0.0 and float(sync.group(2)) > 0, f"no weight sync timed:\n{out}"
    assert re.search(r"^ratio TRL/rlvr: [0-9.]+$", out, re.MULTILINE), out
    assert "torch threads stayed 1" in out, out


@pytest.mark.slow
@pytest.mark.skipif(not _has("vllm"), reason="needs vllm: run in the vLLM environment")
def test_rollout_engines_quick():
    out = _run("rollout.py", "--engines", "--threads", "1", "--hidden", "128", "--layers", "2", "--runs", "1",
               "--prompts", "1", "--groups", "2", "--new-tokens", "4", "--image", "112")
    row = re.search(r"^\s+2\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)x$", out, re.MULTILINE)
    assert row, f"no G = 2 row of HF and vLLM figures:\n{out}"
    hf_s, vllm_s, hf_tps, vllm_tps, ratio = map(float, row.groups())
    # 1 prompt x 2 samples x 4 tokens = 8 tokens in each run; seconds are printed to 0.0005 s
    for s, tps in ((hf_s, hf_tps), (vllm_s, vllm_tps)):
        assert 8 / (s + 0.0005) - 0.05 <= tps <= 8 / (s - 0.0005) + 0.05, (s, tps, out)
    assert (hf_s - 0.0005) / (vllm_s + 0.0005) - 0.005 <= ratio <= (hf_s + 0.0005) / (vllm_s - 0.0005) + 0.005, out


@pytest.mark.slow
def test_gpu_step_quick():
    """The GPU script's CPU path: a tiny model, its steps and figures (both engines where vLLM is installed)."""
    out = _run("gpu_step.py", "--quick")
    steps = ["HF step"] + (["vLLM warm-up step (not compared)", "vLLM step"] if _has("vllm") else [])
    for label in steps:
        m = re.search(rf"^  {re.escape(label)}: step ([0-9.]+) s = rollout ([0-9.]+) .* rollout ([0-9,]+) tokens/s "
                      r"\(4 x 8 tokens\)$", out, re.MULTILINE)
        assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, f"no figures for {label!r}:\n{out}"
    assert out.count("peak memory: process resident set") == len(steps) + (0 if _has("vllm") else 1), out
    assert "actor MFU n/a" in out  # no GPU peak on CPU


def _gpu_step_module():
    spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "benchmarks" / "gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tie", [True, False])
def test_gpu_step_update_flops_by_hand(tie):
    """The MFU numerator on a toy model: hidden 4, 1 layer, vocab 10, a 16-parameter decoder layer,
    a 9-parameter vision tower; one prompt of 3 tokens and 5 patches, G = 2 responses of 2 and 1 tokens."""
    import types

    import torch

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Linear(2, 3)  # 9 parameters
            self.embed = torch.nn.Embedding(10, 4)  # 40
            self.layer = torch.nn.Linear(4, 4, bias=False)  # 16: the decoder "body"
            self.lm_head = torch.nn.Linear(4, 10, bias=False)
            if tie:
                self.lm_head.weight = self.embed.weight
            text = types.SimpleNamespace(hidden_size=4, num_hidden_layers=1, vocab_size=10)
            self.config = types.SimpleNamespace(tie_word_embeddings=tie, get_text_config=lambda: text)

        def get_input_embeddings(self):
            return self.embed

    full, once = _gpu_step_module().update_flops(Toy(), prompt_tokens=[3], response_tokens=[2, 1], patches=[5],
                                                  group_size=2)
    # vision 6*9*5 = 270; head 6*4*10 = 240 per response token; attention 6*h*layers = 24 per pair unit
    # full: (3+2): 6*16*5 + 240*2 + 24*25 = 1560;  (3+1): 6*16*4 + 240 + 24*16 = 1008;  + 270 = 2838
    # once: prompt 6*16*3 + 24*9 = 504; r=2: 6*16*2 + 480 + 24*(2*3*2 + 4) = 1056; r=1: 96 + 240 + 24*7 = 504
    assert full == 2838
    assert once == 270 + 504 + 1056 + 504
