"""Around the Qwen-VL forward: M-RoPE positions, image dedupe, KV-cache keywords, and the multi-process vision-tower sync.

- 3-D M-RoPE positions: every family computes them from ``mm_token_type_ids``,
  ``image_grid_thw`` and ``attention_mask``, so those travel together (``forward_inputs``)
  and rlvr computes positions itself where it prefills (``mrope_positions``);
- each distinct image of a batch is encoded once (``shared_image_features``);
- multi-process runs: a rank whose micro-batch has no image must still run the vision
  tower, or ZeRO-3's parameter gathers (and DDP's gradient reduction) wait forever:
  ``sync_vision_tower_calls``.
"""

from __future__ import annotations

import contextlib

import torch

from rlvr.distributed import world_size


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
        return world_size() > 1 and not has_images

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
