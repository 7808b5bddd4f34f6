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
