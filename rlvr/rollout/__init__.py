"""Rollouts: sample G responses per prompt, keeping what is needed to recompute log-probs exactly.

- ``sampling``: per-response seeds, counter-based uniforms, the sampling logits processor;
- ``hf``: the HF engine, transformers' ``generate`` with group-shared prefill.

The records a rollout produces (``PromptInputs``, ``Response``) and their batches live in
``rlvr.batch``.
"""

from rlvr.rollout.hf import generate
from rlvr.rollout.sampling import SeededSampling, mix_seed, response_seeds, sampling_config, uniform_noise

__all__ = ["SeededSampling", "generate", "mix_seed", "response_seeds", "sampling_config", "uniform_noise"]
