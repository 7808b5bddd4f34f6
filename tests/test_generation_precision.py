"""Generation samples under the training forward's precision (issue 10's audit).

Without DeepSpeed the weights stay fp32 and accelerate runs the prepared model's forward
under bf16 autocast; the unwrapped module that ``generate`` uses must run under the same
autocast. Run in a fresh interpreter: accelerate's state is process-wide.
"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import torch
    from accelerate import Accelerator
    from rlvr.distributed import generation_model

    acc = Accelerator(cpu=True, mixed_precision="{mixed}")
    seen = []  # the matmul's dtype inside each forward (accelerate casts outputs back to fp32)

    class Probe(torch.nn.Linear):
        def forward(self, x):
            out = super().forward(x)
            seen.append(out.dtype)
            return out

    prepared = acc.prepare(Probe(4, 4))
    x = torch.randn(2, 4)
    prepared(x)  # the training forward, through accelerate's wrapper
    with generation_model(acc, prepared) as (module, synced):
        module(x)
    print(*seen)
""")


def _dtypes(mixed: str) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(mixed=mixed)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_bf16_generation_runs_under_the_training_autocast():
    assert _dtypes("bf16") == "torch.bfloat16 torch.bfloat16"


def test_fp32_generation_stays_fp32():
    assert _dtypes("no") == "torch.float32 torch.float32"
