"""Loading policies and processors, and everything that differs between model families.

Family-specific code lives here and nowhere else. Supported: Qwen2-VL, Qwen2.5-VL,
Qwen3-VL and Qwen3.5 (dense), all through one code path. What differs, and where:

- processor class and vision tower location: ``FAMILIES``;
- 3-D M-RoPE positions: Qwen3-VL/3.5 interleave the axes and Qwen3-VL adds DeepStack
  features, all inside transformers once the inputs are right (``rlvr.multimodal``);
- Qwen3.5's linear-attention (gated delta net) layers: transformers zeroes left-pad
  positions before the convolution and the recurrent state (``create_recurrent_attention_mask``),
  so left-padded generation batches are exact and need nothing here; the pure-torch
  fallbacks run on CPU. Tested in ``tests/test_logprobs.py`` with a tiny model whose pad
  embedding is not zero, so a leak would show;
- multi-process runs: ``load_model`` installs ``rlvr.multimodal.sync_vision_tower_calls``.

The torchvision shim: transformers' Qwen-VL processors insist on a video processor, and
the video processor needs torchvision. Where torchvision is missing (CPU-only machines
without a torchvision build) we build the processor image-only (``video_processor=None``)
and save it part by part. ``_image_only_processor`` is the one place that does this, and
it is used only when ``torchvision`` cannot be imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from rlvr.multimodal import sync_vision_tower_calls

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """What rlvr needs to know about one model family."""

    processor_class: str  # transformers processor class name
    vision_attr: str  # attribute path of the vision tower under the task model


FAMILIES: dict[str, Family] = {
    "qwen2_vl": Family(processor_class="Qwen2VLProcessor", vision_attr="model.visual"),
    "qwen2_5_vl": Family(processor_class="Qwen2_5_VLProcessor", vision_attr="model.visual"),
    "qwen3_vl": Family(processor_class="Qwen3VLProcessor", vision_attr="model.visual"),
    "qwen3_5": Family(processor_class="Qwen3VLProcessor", vision_attr="model.visual"),
}


def family_of(model_or_config: Any) -> Family:
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"Model type {model_type!r} is not supported yet; supported families: {sorted(FAMILIES)}. "
            "Check model.name_or_path points at a Qwen-VL checkpoint."
        )
    return FAMILIES[model_type]


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


# --------------------------------------------------------------------------- processors


@contextlib.contextmanager
def _allow_missing_video_processor():
    """Let a processor be built with ``video_processor=None`` (the torchvision shim)."""
    from transformers import processing_utils

    original = processing_utils.ProcessorMixin.check_argument_for_proper_class

    def check(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return original(self, argument_name, argument)

    processing_utils.ProcessorMixin.check_argument_for_proper_class = check
    try:
        yield
    finally:
        processing_utils.ProcessorMixin.check_argument_for_proper_class = original


def _image_only_processor(path: str, model_type: str):
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    family = FAMILIES[model_type]
    cls = getattr(transformers, family.processor_class)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    chat_template = None
    template_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(template_file):
        with open(template_file, encoding="utf-8") as f:
            chat_template = f.read()
    chat_template = chat_template or tokenizer.chat_template
    with _allow_missing_video_processor():
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=chat_template)


def _processor_family(path: str) -> str:
    """The family of a model or processor folder (or hub id): from its processor_config.json, else config.json."""
    from transformers import AutoConfig

    processor_file = os.path.join(path, "processor_config.json")
    if os.path.isfile(processor_file):
        with open(processor_file, encoding="utf-8") as f:
            name = json.load(f).get("processor_class")
        for model_type, family in FAMILIES.items():
            if family.processor_class == name:
                return model_type
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in FAMILIES:
        raise ValueError(f"{path}: model type {model_type!r} is not supported; supported: {sorted(FAMILIES)}")
    return model_type


def load_processor(path: str, min_pixels: int | None = None, max_pixels: int | None = None):
    """Load the processor of ``path`` (local folder or hub id), image-only if torchvision is missing."""
    from transformers import AutoProcessor

    if torchvision_available():
        processor = AutoProcessor.from_pretrained(path)
    else:
        processor = _image_only_processor(path, _processor_family(path))
    if min_pixels is not None or max_pixels is not None:
        from transformers.image_processing_utils import SizeDict

        image_processor = processor.image_processor
        size = {"shortest_edge": image_processor.size.shortest_edge, "longest_edge": image_processor.size.longest_edge}
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        image_processor.size = SizeDict(**size)
    return processor


def save_processor(processor, out_dir: str) -> None:
    """Save a processor so ``load_processor`` (and ``AutoProcessor`` with torchvision) reads it back."""
    if getattr(processor, "video_processor", True) is not None:
        processor.save_pretrained(out_dir)
        return
    # Image-only processor (torchvision shim): save the parts it has.
    os.makedirs(out_dir, exist_ok=True)
    processor.tokenizer.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    if isinstance(processor.chat_template, str):
        with open(os.path.join(out_dir, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(processor.chat_template)
    with open(os.path.join(out_dir, "processor_config.json"), "w", encoding="utf-8") as f:
        json.dump({"processor_class": type(processor).__name__}, f, indent=2)


# --------------------------------------------------------------------------- models


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(path: str, dtype: str = "auto", attn_implementation: str = "sdpa", trust_remote_code: bool = False):
    """Load the policy with ``AutoModelForImageTextToText`` from a local folder or hub id."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=resolve_dtype(dtype),
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    family_of(model)  # fail early on unsupported families
    sync_vision_tower_calls(model)
    return model


def vision_tower(model) -> torch.nn.Module:
    module = model
    for name in family_of(model).vision_attr.split("."):
        module = getattr(module, name)
    return module


def stop_token_ids(processor, model) -> list[int]:
    """Tokens that end a response: the end-of-turn token and the model's EOS tokens."""
    tokenizer = processor.tokenizer
    ids = []
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.append(end_of_turn)
    eos = model.generation_config.eos_token_id
    for i in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]:
        if i is not None and i not in ids:
            ids.append(i)
    return ids


def never_sample_ids(model) -> list[int]:
    """Tokens a response must never contain: vision placeholders and markers.

    A sampled ``<|image_pad|>`` would make the training forward look for an image that is
    not there ("Image features and image tokens do not match"). Random and early models
    do sample them, so generation suppresses them.
    """
    config = model.config
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return [getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)]
