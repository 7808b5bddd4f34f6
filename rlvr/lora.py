"""LoRA adapters on the policy (peft): which layers, the reference policy, what is saved.

- Targets: the ``nn.Linear`` modules whose full name matches ``model.lora.target_modules``
  (a regex; by default every linear layer of the language model), minus the vision tower
  unless ``model.lora.vision_tower=true``. The list is resolved here, so a pattern that
  matches nothing fails at start with the names it could have matched.
- Only adapter weights are trainable; the base model, vision tower included, is frozen.
- Reference policy for the KL penalty: the same model with the adapters switched off
  (``reference_context``), so there is no second copy of the weights.
- Saving: the adapter alone, in peft's format (``adapter_config.json`` and
  ``adapter_model.safetensors``), loadable with ``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

import contextlib
import re

import torch

from rlvr.config import LoraConfig
from rlvr.models import family_of


def is_lora(policy) -> bool:
    return hasattr(policy, "peft_config")


def inner_model(policy):
    """The transformers model under a peft wrapper (adapters are injected into it in place)."""
    return policy.get_base_model() if is_lora(policy) else policy


def lora_targets(model, cfg: LoraConfig) -> list[str]:
    """Names of the modules that get adapters."""
    pattern = re.compile(cfg.target_modules)
    vision = family_of(model).vision_attr
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    in_vision = lambda name: name == vision or name.startswith(vision + ".")  # noqa: E731
    names = [n for n in linear if pattern.fullmatch(n) and (cfg.vision_tower or not in_vision(n))]
    if not names:
        examples = [n for n in linear if not in_vision(n)][:4]
        raise ValueError(
            f"model.lora.target_modules={cfg.target_modules!r} matches no linear layer"
            f"{'' if cfg.vision_tower else ' outside the vision tower'}. It must match whole module names, "
            f"e.g. {examples}.")
    return names


def apply_lora(model, cfg: LoraConfig):
    """Wrap ``model`` with fresh LoRA adapters; returns the peft model (adapters trainable, the rest frozen)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=lora_targets(model, cfg), bias="none")
    return get_peft_model(model, peft_cfg)


def reference_context(policy):
    """Context in which ``policy`` computes the reference (base model) log-probs."""
    return policy.disable_adapter() if is_lora(policy) else contextlib.nullcontext()


def save_adapter(policy, out_dir: str, state_dict: dict[str, torch.Tensor]) -> None:
    """Write the adapter of ``policy`` from ``state_dict`` (its trainable tensors, full size, by parameter name)."""
    policy.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
