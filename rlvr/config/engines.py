"""The rollout engine's settings (``rollout.vllm``) and the off-policy correction (``algorithm.rollout_correction``)."""

from __future__ import annotations

from dataclasses import dataclass

from rlvr.config.problems import Problems

ENGINES = ("hf", "vllm")
CORRECTION_MODES = ("auto", "off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class VLLMConfig:
    # Share of the GPU's memory vLLM may hold (weights + KV cache); the rest is training's.
    # Colocated: every training process runs its own engine on its own GPU.
    gpu_memory_utilization: float = 0.3
    # During the update, free vLLM's memory: 0 = keep everything, 1 = drop the KV cache and move
    # the weights to CPU memory, 2 = drop both (they are re-sent after the update anyway). GPU only.
    sleep_level: int = 1
    enforce_eager: bool = False  # no CUDA graphs: slower decoding, faster start, less memory
    max_num_seqs: int = 256  # sequences decoded together at most
    # Longest prompt + response, tokens; None = data.max_prompt_tokens + rollout.max_new_tokens (with
    # tools: + the trajectory's budget, tools.max_total_tokens or tools.max_turns * rollout.max_new_tokens)
    max_model_len: int | None = None
    # Weights are sent to vLLM after each update in buckets of at most this many MiB (ZeRO-3
    # gathers one bucket at a time, so this bounds the extra memory of a sync).
    sync_bucket_mib: int = 512
    cpu_kv_cache_gib: float = 1.0  # CPU only (tests, the demo): KV cache space, GiB

    def problems(self) -> Problems:
        p = Problems()
        p.require(0 < self.gpu_memory_utilization < 1, f"rollout.vllm.gpu_memory_utilization="
                  f"{self.gpu_memory_utilization} must be in (0, 1): the share of the GPU's memory vLLM may hold "
                  "while training shares the GPU (0.3 to 0.6 is typical).")
        p.one_of("rollout.vllm.sleep_level", self.sleep_level, (0, 1, 2))
        p.require(self.max_num_seqs >= 1, f"rollout.vllm.max_num_seqs={self.max_num_seqs} must be >= 1.")
        p.require(self.max_model_len is None or self.max_model_len >= 2, f"rollout.vllm.max_model_len="
                  f"{self.max_model_len} must be >= 2 tokens, or null to derive it from the prompt budget.")
        p.require(self.sync_bucket_mib >= 1, f"rollout.vllm.sync_bucket_mib={self.sync_bucket_mib} must be >= 1.")
        p.require(self.cpu_kv_cache_gib > 0, f"rollout.vllm.cpu_kv_cache_gib={self.cpu_kv_cache_gib} must be > 0.")
        return p


@dataclass
class RolloutCorrectionConfig:
    # Importance weights w_t = pi_old(o_t) / pi_rollout(o_t) between the policy the update starts
    # from and the engine that sampled; each token's loss term is multiplied by the weight
    # (rlvr.correction; README, Rollout engines). auto = token_truncate with rollout.engine=vllm,
    # off with hf (its samples are the training forward's to ~1e-6) | off | token_truncate (term x
    # min(w_t, cap)) | token_mask (term x w_t, or 0 when w_t is outside [mask_low, mask_high]) |
    # sequence_truncate / sequence_mask (the same with one weight per response: the geometric
    # mean of its token weights, not their product, so the bounds do not depend on the length)
    mode: str = "auto"
    cap: float = 2.0  # upper bound C of the *_truncate modes (TRL's and verl's default C = 2)
    # lower bound of the *_mask modes, inclusive (verl's default is 1 / upper). A response's
    # geometric mean stays near 1, so sequence_mask wants tight bounds, e.g. 0.98 and 1.02
    mask_low: float = 0.5
    mask_high: float = 2.0  # upper bound of the *_mask modes, inclusive

    def problems(self) -> Problems:
        p = Problems()
        p.one_of("algorithm.rollout_correction.mode", self.mode, CORRECTION_MODES)
        p.require(1 <= self.cap < float("inf"), f"algorithm.rollout_correction.cap={self.cap} must be >= 1 and "
                  "finite: below 1 it would shrink even tokens both policies agree on (w = 1). 2.0 is typical.")
        p.require(0 <= self.mask_low < 1 < self.mask_high < float("inf"), f"algorithm.rollout_correction.mask_low="
                  f"{self.mask_low} and mask_high={self.mask_high} must satisfy 0 <= mask_low < 1 < mask_high "
                  "(finite), so a token both policies agree on (w = 1) is kept. 0.5 and 2.0 are typical per token.")
        return p
