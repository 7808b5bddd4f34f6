"""Loading policies and processors, and everything that differs between model families.

Family-specific code lives here and nowhere else. Supported: Qwen2-VL, Qwen2.5-VL,
Qwen3-VL and Qwen3.5 (dense), all through one code path. What differs, and where:

- processor class and vision tower location: ``FAMILIES``;
- 3-D M-RoPE positions: every family computes them from ``mm_token_type_ids``,
  ``image_grid_thw`` and ``attention_mask``, so those travel together (``forward_inputs``);
  Qwen3-VL/3.5 interleave the axes and Qwen3-VL adds DeepStack features, all inside
  transformers once those inputs are right;
- Qwen3.5's linear-attention (gated delta net) layers: transformers zeroes left-pad
  positions before the convolution and the recurrent state (``create_recurrent_attention_mask``),
  so left-padded generation batches are exact and need nothing here; the pure-torch
  fallbacks run on CPU. Tested in ``tests/test_logprobs.py`` with a tiny model whose pad
  embedding is not zero, so a leak would show;
- multi-process runs: a rank whose micro-batch has no image must still run the vision
  tower, or ZeRO-3's parameter gathers (and DDP's gradient reduction) wait forever:
  ``sync_vision_tower_calls``.

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


# --------------------------------------------------------------------------- multi-process


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def dummy_vision_inputs(config, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest image the vision tower accepts: one merged patch, all zeros.

    Returns ``pixel_values`` [m*m, C*T*P*P] and ``grid_thw`` [1, 3] = (1, m, m), m the spatial merge size.
    """
    v = config.vision_config
    m = v.spatial_merge_size
    width = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    pixels = torch.zeros(m * m, width, device=device, dtype=dtype)  # [m*m, C*T*P*P]
    grid = torch.tensor([[1, m, m]], device=device, dtype=torch.long)  # [1, 3]
    return pixels, grid


# transformers 5.24 renamed the forward's KV-cache keyword ``past_key_values`` to ``cache``
# (the old name still works until 5.40, with a FutureWarning). Both names are read, and the
# model's own name is used when rlvr passes a cache, so the supported range (5.19 to 5.24)
# runs without warnings. Looking for the old name alone made the vision-tower hooks take
# 5.24's decode steps for training forwards (issue 10).
CACHE_KEYS = ("cache", "past_key_values")


def cache_in(kwargs: dict):
    """The KV cache a forward was called with, under either keyword, or None."""
    for key in CACHE_KEYS:
        if kwargs.get(key) is not None:
            return kwargs[key]
    return None


def cache_kwarg(module: torch.nn.Module) -> str:
    """The keyword ``module.forward`` takes its KV cache by: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _VisionTowerSync:
    """The hooks of ``sync_vision_tower_calls`` on one model."""

    def __init__(self, decoder: torch.nn.Module):
        self.decoder = decoder
        self.masked_image = False  # this decoder call carries the dummy column

    @staticmethod
    def _needed(kwargs: dict) -> bool:
        encoded = kwargs.get("mm_encoder_outputs") or {}  # generate passes {} for text-only prompts
        has_images = any(kwargs.get(k) is not None for k in ("pixel_values", "pixel_values_videos")) or any(
            v is not None for v in encoded.values())
        return _world_size() > 1 and not has_images

    def before_model(self, module, args, kwargs):
        """Generation prefill: run the tower where ``generate`` runs it on a rank with images."""
        cache = cache_in(kwargs)
        if self._needed(kwargs) and cache is not None and cache.get_seq_length() == 0:
            pixels, grid = dummy_vision_inputs(self.decoder.config, self.decoder.device, self.decoder.visual.dtype)
            self.decoder.get_image_features(pixel_values=pixels, image_grid_thw=grid)
        return None

    def before_decoder(self, module, args, kwargs):
        """Training layout (no cache): send a masked dummy image through the model's own image path."""
        self.masked_image = False
        if not self._needed(kwargs) or cache_in(kwargs) is not None:
            return None
        if args or kwargs.get("input_ids") is None or kwargs.get("attention_mask") is None:
            raise ValueError("sync_vision_tower_calls needs the decoder called with input_ids= and attention_mask= "
                             "keywords (as rlvr.logprobs does) to add its masked dummy image")
        self.masked_image = True
        return args, self._with_masked_image(kwargs)

    def _with_masked_image(self, kwargs: dict) -> dict:
        """Append one column holding a one-token dummy image that no real token can see.

        The column is the last one and its attention mask is 0, so the causal, padding and
        linear-attention masks keep it out of every real position, and M-RoPE positions
        skip it; the model still runs its own image path on it (vision tower, DeepStack
        injection) in its own order, forward and backward.
        """
        config = self.decoder.config
        ids = kwargs["input_ids"]  # [B, L]
        pixels, grid = dummy_vision_inputs(config, ids.device, self.decoder.visual.dtype)
        column = ids[:, -1:].masked_fill(ids[:, -1:] == config.image_token_id, 0)  # [B, 1]; any masked token
        column[0, 0] = config.image_token_id  # one image token in all: one merged patch
        types = torch.zeros_like(column)  # [B, 1]
        types[0, 0] = 1
        mm_types = kwargs.get("mm_token_type_ids")
        if mm_types is None:
            mm_types = torch.zeros_like(ids)
        mask = kwargs["attention_mask"]
        return {
            **kwargs,
            "input_ids": torch.cat([ids, column], dim=1),  # [B, L+1]
            "attention_mask": torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1),  # [B, L+1]
            "mm_token_type_ids": torch.cat([mm_types, types.to(mm_types.dtype)], dim=1),  # [B, L+1]
            "pixel_values": pixels,
            "image_grid_thw": grid,
        }

    def after_decoder(self, module, args, kwargs, output):
        if self.masked_image:
            output.last_hidden_state = output.last_hidden_state[:, :-1]  # [B, L, H]: drop the dummy column
        self.masked_image = False
        return output


def sync_vision_tower_calls(model) -> None:
    """Make every rank call the vision tower in every forward that could: the ZeRO-3 fix.

    Under ZeRO-3 each module gathers its partitioned parameters with a collective when it
    runs, and again in backward, so all ranks must run the same modules in the same order,
    forward and backward. A rank whose micro-batch is text-only would skip the vision tower
    while another runs it, and both wait forever (DDP's gradient reduction stalls the same
    way). In a multi-process run, a decoder call with no image therefore still runs it:

    - training-layout forwards (no cache; ``rlvr.logprobs``): one extra, fully masked
      column carrying a one-token dummy image goes through the model's own image path,
      so the order of gathers matches a real image exactly, DeepStack included; the
      column is dropped from the output, so no log-prob changes;
    - the prefill of generation (forward only): ``generate`` runs the tower on real
      images before it calls the model, outside DeepSpeed's forward step; a rank without
      images runs it on the dummy image at the same point, a pre-hook of the whole model
      registered before ``accelerator.prepare`` adds DeepSpeed's own;
    - decode steps and single-process runs: nothing.

    DeepSpeed also checks that every rank recorded the same module order, so "the same
    modules" is not enough: the order and the step they fall in must match too. Installed
    by ``load_model`` (before ``prepare``); tested with two ZeRO-3 CPU processes, with
    generation, forward and backward, in ``tests/test_families.py``.
    """
    decoder, _ = decoder_and_head(model)
    if getattr(model, "_rlvr_vision_sync", None) is None:
        sync = _VisionTowerSync(decoder)
        model.register_forward_pre_hook(sync.before_model, with_kwargs=True)
        decoder.register_forward_pre_hook(sync.before_decoder, with_kwargs=True)
        decoder.register_forward_hook(sync.after_decoder, with_kwargs=True)
        model._rlvr_vision_sync = sync


def vision_tower(model) -> torch.nn.Module:
    module = model
    for name in family_of(model).vision_attr.split("."):
        module = getattr(module, name)
    return module


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The part of the model that yields final hidden states, and the output projection.

    Splitting them lets us project to the vocabulary in chunks instead of materialising
    [B, T, V] logits (see ``rlvr.logprobs``).
    """
    return model.model, model.get_output_embeddings()


def mrope_positions(decoder, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor, attention_mask: torch.Tensor,
                    image_grid_thw: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D M-RoPE positions [3, B, L] and offsets [B, 1] of a (possibly left-padded) batch.

    They depend on the unpadded tokens only. Computed explicitly rather than left to the
    model, which, given no image, neither recomputes nor clears the offsets of its last call.
    Text-only batches count positions over the attention mask, with offset 0.
    """
    if image_grid_thw is not None:
        return decoder.get_rope_index(input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
                                      attention_mask=attention_mask)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)  # [3, B, L]
    deltas = torch.zeros(len(input_ids), 1, dtype=torch.long, device=input_ids.device)  # [B, 1]
    return positions, deltas


def select_images(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor,
                  indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The patch rows [N_patches', D] and grid rows [len(indices), 3] of the images ``indices``, in that order."""
    ends = image_grid_thw.prod(-1).cumsum(0).tolist()  # patch rows of each image end here
    starts = [0] + ends[:-1]
    pixels = torch.cat([pixel_values[starts[i]:ends[i]] for i in indices])  # [N_patches', D]
    return pixels, image_grid_thw[indices]


@contextlib.contextmanager
def shared_image_features(decoder: torch.nn.Module, image_source: torch.Tensor | None):
    """Within the block, the decoder encodes each distinct image once.

    ``image_source`` [N_images]: for each image of the batch (in ``image_grid_thw`` order),
    the index of the first image identical to it (``rlvr.batch.collate_sequences`` knows: the
    G samples of a prompt share its images). The vision tower then runs on the distinct
    images only and their features are repeated to every copy, so backward sums the
    copies' gradients into each image, as G separate encodings would. The model's own
    image path (placeholder scatter, DeepStack) runs unchanged on the repeated features,
    in its usual order, which ZeRO-3 needs (see ``sync_vision_tower_calls``). A call with
    other images (the dummy image of that fix) passes through.
    """
    source = None if image_source is None else image_source.tolist()
    if source is None or len(set(source)) == len(source):
        yield
        return
    original = decoder.get_image_features
    distinct = sorted(set(source))
    slot = {image: k for k, image in enumerate(distinct)}

    def encode_distinct(pixel_values, image_grid_thw=None, **kwargs):
        if image_grid_thw is None or len(image_grid_thw) != len(source):
            return original(pixel_values, image_grid_thw, **kwargs)
        out = original(*select_images(pixel_values, image_grid_thw, distinct), **kwargs)
        out.pooler_output = tuple(out.pooler_output[slot[i]] for i in source)  # per image [tokens_i, H]
        if getattr(out, "deepstack_features", None) is not None:  # Qwen3-VL: per layer, per image
            out.deepstack_features = [tuple(layer[slot[i]] for i in source) for layer in out.deepstack_features]
        return out

    decoder.get_image_features = encode_distinct  # an instance attribute shadows the method
    try:
        yield
    finally:
        del decoder.get_image_features


def forward_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keyword arguments of the decoder forward for a collated batch.

    Qwen-VL computes its 3-D rotary positions from ``mm_token_type_ids``, ``image_grid_thw``
    and ``attention_mask``; leaving any of them out silently changes every position of a
    multimodal row, so they always travel together.
    """
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    return {k: batch[k] for k in keys if batch.get(k) is not None}


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
