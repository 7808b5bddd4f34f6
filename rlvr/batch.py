"""The records between stages: a processed prompt, a sampled response, and their batches.

A prompt is processed once (``encode_prompt``) into unpadded tensors. Generation batches
left-pad them (``collate_prompts``); training batches lay out ``[prompt | response | right
padding]`` (``collate_sequences``). Both give every token the same 3-D M-RoPE position,
because Qwen-VL computes positions over the attention mask only, so the log-probs recorded
while sampling equal those of the training forward (tested in ``tests/test_logprobs.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlvr.config import DataConfig
from rlvr.data import Example, open_image, prompt_text


@dataclass
class PromptInputs:
    """One prompt, processed once and unpadded."""

    input_ids: torch.Tensor  # [P]
    mm_token_type_ids: torch.Tensor  # [P]; 0 text, 1 image
    pixel_values: torch.Tensor | None  # [N_patches, D]
    image_grid_thw: torch.Tensor | None  # [N_images, 3]
    # The images as opened (PIL), in order, for engines that process images themselves (vLLM);
    # pixel_values are these through the run's processor.
    images: list | None = None


@dataclass
class Response:
    """One sampled response to ``prompt_index`` (an index into the step's prompt list)."""

    prompt_index: int
    token_ids: torch.Tensor  # [R], up to and including the stop token
    logprobs: torch.Tensor  # [R], log-probs of the distribution sampled from (``rlvr.rollout.sampling``)
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)

    @property
    def finish_reason(self) -> str:
        """"stop" (ended with a stop token) or "length" (cut at max_new_tokens)."""
        return "stop" if self.finished else "length"


def encode_prompt(example: Example, processor, cfg: DataConfig) -> PromptInputs:
    text = prompt_text(example, processor, cfg)
    images = [open_image(ref) for ref in example.images] or None
    enc = processor(text=[text], images=images, return_tensors="pt")
    return PromptInputs(
        input_ids=enc["input_ids"][0],
        mm_token_type_ids=enc["mm_token_type_ids"][0] if "mm_token_type_ids" in enc else torch.zeros_like(enc["input_ids"][0]),
        pixel_values=enc.get("pixel_values"),
        image_grid_thw=enc.get("image_grid_thw"),
        images=images,
    )


def continue_prompt(prompt: PromptInputs, response_ids: torch.Tensor, appended: PromptInputs) -> PromptInputs:
    """The conversation so far as one prompt: ``prompt``, the model's own tokens, then ``appended``.

    ``response_ids`` are the sampled token ids as they are (never decoded and re-tokenised);
    ``appended`` is what follows them, processed by the run's processor (e.g. the end of the
    turn, a tool's result with its images, the start of the next assistant turn). Its images
    come after the prompt's, as their placeholders do.
    """
    def cat(a, b):
        return b if a is None else a if b is None else torch.cat([a, b])

    response_ids = response_ids.to(prompt.input_ids.dtype)
    images = (prompt.images or []) + (appended.images or [])
    return PromptInputs(
        input_ids=torch.cat([prompt.input_ids, response_ids, appended.input_ids]),
        mm_token_type_ids=torch.cat([prompt.mm_token_type_ids, torch.zeros_like(response_ids),
                                     appended.mm_token_type_ids.to(prompt.mm_token_type_ids.dtype)]),
        pixel_values=cat(prompt.pixel_values, appended.pixel_values),
        image_grid_thw=cat(prompt.image_grid_thw, appended.image_grid_thw),
        images=images or None,
    )


def _cat_vision(prompts: list[PromptInputs]) -> dict[str, torch.Tensor | None]:
    pixels = [p.pixel_values for p in prompts if p.pixel_values is not None]
    grids = [p.image_grid_thw for p in prompts if p.image_grid_thw is not None]
    return {
        "pixel_values": torch.cat(pixels) if pixels else None,
        "image_grid_thw": torch.cat(grids) if grids else None,
    }


def _image_source(prompts: list[PromptInputs]) -> torch.Tensor | None:
    """[N_images]: for each image of the batch, the index of its first copy (rows of one prompt share images)."""
    first_image: dict[int, int] = {}  # id(prompt) -> index of its first image in the batch
    source: list[int] = []
    for p in prompts:
        n = 0 if p.image_grid_thw is None else len(p.image_grid_thw)
        start = first_image.setdefault(id(p), len(source))
        source.extend(range(start, start + n))
    return torch.tensor(source, dtype=torch.long) if source else None


def _prompt_group(prompts: list[PromptInputs]) -> torch.Tensor:
    """[B]: for each row, the index of its prompt among the batch's distinct prompts, in order of first use."""
    groups: dict[int, int] = {}
    return torch.tensor([groups.setdefault(id(p), len(groups)) for p in prompts], dtype=torch.long)


def collate_prompts(prompts: list[PromptInputs], pad_id: int) -> dict[str, torch.Tensor | None]:
    """Left-padded generation batch."""
    width = max(len(p.input_ids) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # [B, P]
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, P]
    mm_types = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, P]
    for i, p in enumerate(prompts):
        n = len(p.input_ids)
        input_ids[i, width - n:] = p.input_ids
        attention_mask[i, width - n:] = 1
        mm_types[i, width - n:] = p.mm_token_type_ids
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_types, **_cat_vision(prompts)}


def collate_sequences(prompts: list[PromptInputs], responses: list[torch.Tensor], pad_id: int) -> dict[str, torch.Tensor | None]:
    """Training batch: ``[prompt | response | right padding]`` per row.

    Adds ``response_ids`` [B, R] and ``response_mask`` [B, R] (right-padded),
    ``logit_positions`` [B, R]: the sequence index whose output predicts response token t,
    i.e. ``prompt_len - 1 + t``, ``image_source`` [N_images] and ``prompt_group`` [B]
    (``_image_source``, ``_prompt_group``: rows holding the same ``PromptInputs`` object
    share its prompt and images, which ``rlvr.logprobs`` computes once).
    """
    b = len(prompts)
    width = max(len(p.input_ids) + len(r) for p, r in zip(prompts, responses))
    r_width = max(max(len(r) for r in responses), 1)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)  # [B, L]
    attention_mask = torch.zeros((b, width), dtype=torch.long)  # [B, L]
    mm_types = torch.zeros((b, width), dtype=torch.long)  # [B, L]
    response_ids = torch.full((b, r_width), pad_id, dtype=torch.long)  # [B, R]
    response_mask = torch.zeros((b, r_width), dtype=torch.float32)  # [B, R]
    logit_positions = torch.zeros((b, r_width), dtype=torch.long)  # [B, R]
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n, m = len(p.input_ids), len(r)
        input_ids[i, :n] = p.input_ids
        input_ids[i, n:n + m] = r
        attention_mask[i, :n + m] = 1
        mm_types[i, :n] = p.mm_token_type_ids
        response_ids[i, :m] = r
        response_mask[i, :m] = 1.0
        # Padded response slots point at the last real position; they are masked anyway.
        logit_positions[i] = (n - 1 + torch.arange(r_width)).clamp(max=n + m - 1)
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_types,
        **_cat_vision(prompts), "image_source": _image_source(prompts), "prompt_group": _prompt_group(prompts),
        "response_ids": response_ids, "response_mask": response_mask, "logit_positions": logit_positions,
    }
