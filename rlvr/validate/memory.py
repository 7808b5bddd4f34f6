"""Memory per GPU, estimated from the model config (never the weights): model states under ZeRO, KV cache, log-prob chunk."""

from __future__ import annotations

import os
from dataclasses import dataclass

from rlvr.validate.report import FAIL, GIB, INFO, OK, WARN, Report, _brief, _count, _gib


@dataclass
class MemoryEstimate:
    params: int  # all parameters
    trainable: int  # parameters that get gradients and optimizer state
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    reference_gib: float
    kv_cache_gib: float
    logits_chunk_gib: float
    notes: list[str]

    @property
    def states_gib(self) -> float:
        """Weights, gradients, optimizer state and reference model: a lower bound on training memory."""
        return self.weights_gib + self.grads_gib + self.optimizer_gib + self.reference_gib


def count_parameters(config, freeze_vision_tower: bool, lora_rank: int, lora_targets: str | None = None,
                     lora_vision: bool = False) -> tuple[int, int, int]:
    """(all parameters, trainable parameters, LoRA parameters) without allocating weights (meta device).

    The adapted layers are the ones training adapts (``rlvr.lora.lora_targets``) for
    ``model.lora.target_modules`` = ``lora_targets`` (None = its default) and ``vision_tower`` = ``lora_vision``.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    from rlvr.config import LoraConfig
    from rlvr.lora import lora_targets as targets_of
    from rlvr.models import vision_tower

    with init_empty_weights():
        model = AutoModelForImageTextToText.from_config(config)
    model.tie_weights()  # weights on the meta device are not tied by from_config: a tied head counts once
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in vision_tower(model).parameters())
    if lora_rank <= 0:
        return total, total - vision if freeze_vision_tower else total, 0
    lora_cfg = LoraConfig(rank=lora_rank, vision_tower=lora_vision)
    if lora_targets is not None:
        lora_cfg.target_modules = lora_targets
    modules = dict(model.named_modules())
    lora = sum(lora_rank * (modules[n].in_features + modules[n].out_features) for n in targets_of(model, lora_cfg))
    return total + lora, lora, lora


def estimate_memory(cfg, config, num_gpus: int = 1, zero_stage: int = 0, lora_rank: int = 0,
                    on_gpu: bool = True, offload_optimizer: bool = False, offload_params: bool = False) -> MemoryEstimate:
    """Per-GPU bytes of model states under ZeRO ``zero_stage`` (0 = plain data parallel).

    Plain data parallel (what the trainer does without DeepSpeed): weights in the load dtype
    (``model.dtype=auto`` loads float32 and trains with bf16 autocast), gradients in the same
    dtype, AdamW's two moments in it too. DeepSpeed with bf16: 2-byte weights and gradients
    plus 12 bytes of optimizer state per trainable parameter (fp32 master copy and two
    moments), partitioned over GPUs from stage 1 (optimizer), 2 (+ gradients), 3 (+ weights).
    ZeRO offload moves the optimizer state (and with ``offload_params`` the weights) to CPU memory.
    """
    lora_cfg = cfg.model.lora
    total, trainable, lora = count_parameters(config, cfg.model.freeze_vision_tower, lora_rank,
                                              lora_cfg.target_modules, lora_cfg.vision_tower)
    frozen = total - trainable
    n = max(1, num_gpus)
    load_bytes = {"auto": 4, "float32": 4, "bfloat16": 2, "float16": 2}.get(cfg.model.dtype, 4)
    notes = []
    if zero_stage > 0:
        w, g, o = 2, 2, 12
        notes.append(f"DeepSpeed ZeRO-{zero_stage} over {n} GPU(s), bf16 weights/gradients, fp32 master weights and "
                     "AdamW moments (12 bytes per trainable parameter)")
    else:
        w = g = load_bytes
        o = 2 * load_bytes
        notes.append(f"plain data parallel over {n} GPU(s): every GPU holds everything; weights, gradients and AdamW "
                     f"moments in {'float32' if load_bytes == 4 else cfg.model.dtype} ({load_bytes} bytes)")
    weights = (trainable + frozen) * w / (n if zero_stage >= 3 else 1)
    grads = trainable * g / (n if zero_stage >= 2 else 1)
    optim = trainable * o / (n if zero_stage >= 1 else 1)
    if zero_stage > 0 and offload_optimizer:
        optim = 0.0
        notes.append("optimizer state offloaded to CPU memory")
    if zero_stage >= 3 and offload_params:
        weights = 0.0
        notes.append("weights offloaded to CPU memory (gathered layer by layer)")
    reference = 0.0
    if cfg.algorithm.kl_coef > 0:
        if lora:
            notes.append("algorithm.kl_coef > 0 with LoRA: the reference is the model with its adapters off, no copy")
        else:
            reference = total * load_bytes / (n if zero_stage >= 3 else 1)  # partitioned like the policy under ZeRO-3
            notes.append("algorithm.kl_coef > 0: a frozen reference copy of the model")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", 0) or 0
    heads = getattr(text, "num_attention_heads", 1) or 1
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or (getattr(text, "hidden_size", 0) // heads)
    act_bytes = 2 if on_gpu and cfg.model.dtype != "float32" else 4
    seq = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    kv = cfg.rollout.micro_batch_size * seq * layers * 2 * kv_heads * head_dim * act_bytes
    vocab = getattr(text, "vocab_size", 0) or 0
    # one chunk of fp32 logits and its gradient: logprob_chunk_size positions of every micro-batch
    # row; under a token budget a chunk holds at most the budget's tokens
    t = cfg.trainer
    rows = t.micro_batch_size * t.logprob_chunk_size if t.micro_batch_tokens is None else t.micro_batch_tokens
    logits = rows * vocab * 4 * 2
    if lora:
        notes.append(f"LoRA rank {lora_rank} on the linear layers model.lora.target_modules matches: "
                     f"{_count(lora)} trainable parameters")
    elif cfg.model.freeze_vision_tower:
        notes.append("model.freeze_vision_tower=true: the vision tower gets no gradients or optimizer state")
    return MemoryEstimate(total, trainable, weights / GIB, grads / GIB, optim / GIB, reference / GIB, kv / GIB,
                          logits / GIB, notes)


def check_memory(cfg, config, report: Report, num_gpus: int, zero_stage: int, lora_rank: int | None,
                 gpu_memory_gb: float | None, offload: tuple[bool, bool] = (False, False)) -> MemoryEstimate | None:
    """``lora_rank`` None: the config's ``model.lora.rank`` (0 where the config has no LoRA)."""
    section = "Memory per GPU (estimate)"
    if lora_rank is None:
        lora_rank = cfg.model.lora.rank
    try:
        est = estimate_memory(cfg, config, num_gpus, zero_stage, lora_rank, offload_optimizer=offload[0],
                              offload_params=offload[1])
    except Exception as e:  # noqa: BLE001 - an estimate must not stop the report
        report.add(section, WARN, f"could not estimate memory: {_brief(e)}")
        return None
    report.add(section, INFO, f"{_count(est.params)} parameters, {_count(est.trainable)} trainable; "
                              + "; ".join(est.notes))
    report.add(section, INFO, f"weights {_gib(est.weights_gib)} + gradients {_gib(est.grads_gib)} + optimizer "
                              f"{_gib(est.optimizer_gib)}" + (f" + reference model {_gib(est.reference_gib)}"
                                                              if est.reference_gib else "")
                              + f" = {_gib(est.states_gib)} of model states; on top: generation KV cache up to "
                              f"{_gib(est.kv_cache_gib)} (rollout.micro_batch_size={cfg.rollout.micro_batch_size} x "
                              f"{cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens} tokens), log-prob chunk "
                              f"{_gib(est.logits_chunk_gib)}, and activations (not estimated)")
    if gpu_memory_gb is None:
        report.add(section, INFO, "no GPU here to compare with; pass --gpu-memory-gb 80 (or your GPU's size) to check")
        return est
    if est.states_gib > gpu_memory_gb:
        report.add(section, FAIL, f"model states alone need {_gib(est.states_gib)} per GPU, more than the "
                                  f"{gpu_memory_gb:g} GiB available: training cannot fit. Use more GPUs with ZeRO-3 "
                                  "(--zero-stage 3), LoRA, model.freeze_vision_tower=true or a smaller model.")
    elif est.states_gib + est.kv_cache_gib > gpu_memory_gb:
        report.add(section, WARN, f"model states plus the generation KV cache need "
                                  f"{_gib(est.states_gib + est.kv_cache_gib)}, more than {gpu_memory_gb:g} GiB; "
                                  "lower rollout.micro_batch_size.")
    else:
        report.add(section, OK, f"{_gib(est.states_gib + est.kv_cache_gib)} of states and KV cache fit in "
                                f"{gpu_memory_gb:g} GiB, leaving {_gib(gpu_memory_gb - est.states_gib - est.kv_cache_gib)} "
                                "for activations")
    return est


def _environment_offload() -> tuple[bool, bool]:
    """(optimizer, weights) offloaded to CPU, from accelerate's launcher environment."""
    return (os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none") in ("cpu", "nvme"),
            os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none") in ("cpu", "nvme"))


def _environment_defaults() -> tuple[int, int, float | None]:
    """(GPUs, ZeRO stage, GiB per GPU) from the launcher's environment and the local GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0") or 0)
    memory = None
    try:
        import torch

        if torch.cuda.is_available():
            memory = torch.cuda.get_device_properties(0).total_memory / GIB
    except Exception:  # noqa: BLE001
        pass
    return world, stage, memory


def _default_accelerate_processes() -> int | None:
    """num_processes of accelerate's default config (``accelerate config``), if there is one."""
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    path = os.path.join(home, "accelerate", "default_config.yaml")
    if not os.path.isfile(path):
        return None
    try:
        return _accelerate_file(path)[0]
    except (OSError, ValueError):
        return None


def _accelerate_file(path: str) -> tuple[int | None, int | None, tuple[bool, bool]]:
    """(num_processes, zero_stage, (optimizer offloaded, weights offloaded)) from an accelerate config YAML."""
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    ds = data.get("deepspeed_config") or {}
    offload = (ds.get("offload_optimizer_device") in ("cpu", "nvme"), ds.get("offload_param_device") in ("cpu", "nvme"))
    return data.get("num_processes"), ds.get("zero_stage"), offload
