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
class Turn:
    """One segment of a multi-turn response: ``token_ids[start:end]`` of the ``Response``.

    ``kind`` "model": tokens the model sampled (trained on); "observation": what was appended
    after a tool call (the end of the model's turn, the tool's response with its images, the
    next assistant turn's opening), never trained on. An observation names its ``tool`` (None
    when the call could not be parsed), its ``status`` ("ok", "error", "timeout", "invalid":
    the call was malformed or named an unknown tool), the ``text`` the model reads and how
    many ``images`` it shows (``Response.images``, in order).
    """

    kind: str
    start: int
    end: int
    tool: str | None = None
    status: str | None = None
    text: str = ""
    images: int = 0


@dataclass
class Response:
    """One sampled response to ``prompt_index`` (an index into the step's prompt list).

    A single-turn response is the model's tokens only. A multi-turn one (``rlvr.agent.rollout``)
    is the whole trajectory after the prompt: the model's turns and, between them, the
    observations appended after its tool calls, with their images; ``loss_mask`` is 1 on the
    model's tokens and 0 on the observations' (whose ``logprobs`` are 0), ``turns`` lists the
    segments. Nothing in ``token_ids`` was ever decoded and tokenised again.
    """

    prompt_index: int
    token_ids: torch.Tensor  # [R], up to and including the stop token
    logprobs: torch.Tensor  # [R], log-probs of the distribution sampled from (``rlvr.rollout.sampling``)
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)
    loss_mask: torch.Tensor | None = None  # [R] 1.0 on sampled tokens, 0.0 on appended ones; None: all sampled
    mm_token_type_ids: torch.Tensor | None = None  # [R] 1 on the observations' image tokens; None: all text
    pixel_values: torch.Tensor | None = None  # the observations' images, processed as the prompt's
    image_grid_thw: torch.Tensor | None = None  # [N_obs_images, 3]
    images: list | None = None  # the observations' images (PIL), in order
    turns: list[Turn] | None = None  # None: one model turn
    end_reason: str | None = None  # why a multi-turn rollout ended ("answer", "length", "max_turns", ...)

    @property
    def finish_reason(self) -> str:
        """"stop" (ended with a stop token) or "length" (cut at max_new_tokens)."""
        return "stop" if self.finished else "length"

    @property
    def trained_tokens(self) -> int:
        """How many tokens the loss counts: the model's own."""
        return len(self.token_ids) if self.loss_mask is None else int(self.loss_mask.sum().item())

    @property
    def tool_calls(self) -> int:
        return 0 if self.turns is None else sum(t.kind == "observation" for t in self.turns)

    def answer_ids(self) -> torch.Tensor:
        """The tokens of the model's last turn: what the reward reads; no tokens when a budget ended the
        trajectory at a call (its last turn is a call, not an answer)."""
        if self.end_reason not in (None, "answer", "length"):
            return self.token_ids[:0]
        if not self.turns:
            return self.token_ids
        last = [t for t in self.turns if t.kind == "model"][-1]
        return self.token_ids[last.start:last.end]

    def model_ids(self) -> torch.Tensor:
        """The model's own tokens of every turn, in order (the observations left out)."""
        if self.loss_mask is None:
            return self.token_ids
        return self.token_ids[self.loss_mask.bool()]


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


def _cat_vision(prompts: list[PromptInputs], responses: list | None = None) -> dict[str, torch.Tensor | None]:
    """The batch's images in sequence order: row by row, the prompt's, then the response's (observations)."""
    responses = responses or [None] * len(prompts)
    pixels, grids = [], []
    for p, r in zip(prompts, responses):
        for item in (p, r):
            if item is not None and getattr(item, "image_grid_thw", None) is not None:
                pixels.append(item.pixel_values)
                grids.append(item.image_grid_thw)
    return {
        "pixel_values": torch.cat(pixels) if pixels else None,
        "image_grid_thw": torch.cat(grids) if grids else None,
    }


def _image_source(prompts: list[PromptInputs], responses: list | None = None) -> torch.Tensor | None:
    """[N_images]: for each image of the batch, the index of its first copy (rows of one prompt share
    the prompt's images; a response's own images are its own)."""
    responses = responses or [None] * len(prompts)
    first_image: dict[int, int] = {}  # id(prompt) -> index of its first image in the batch
    source: list[int] = []
    for p, r in zip(prompts, responses):
        n = 0 if p.image_grid_thw is None else len(p.image_grid_thw)
        start = first_image.setdefault(id(p), len(source))
        source.extend(range(start, start + n))
        own = 0 if r is None or r.image_grid_thw is None else len(r.image_grid_thw)
        source.extend(range(len(source), len(source) + own))
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


def collate_sequences(prompts: list[PromptInputs], responses: list, pad_id: int) -> dict[str, torch.Tensor | None]:
    """Training batch: ``[prompt | response | right padding]`` per row.

    ``responses``: ``Response`` records (or bare token-id tensors). Adds ``response_ids``
    [B, R] and ``response_mask`` [B, R] (right-padded; a multi-turn response's ``loss_mask``,
    so observation tokens are 0), ``logit_positions`` [B, R]: the sequence index whose output
    predicts response token t, i.e. ``prompt_len - 1 + t``, ``image_source`` [N_images] and
    ``prompt_group`` [B] (``_image_source``, ``_prompt_group``: rows holding the same
    ``PromptInputs`` object share its prompt and images, which ``rlvr.logprobs`` computes
    once), ``response_images`` (a 0-dim tensor, 1 when some response holds images: the
    observations of tool calls) and ``image_owner`` [N_images] (0: a prompt's image, 1: a response's).
    """
    records = [r if isinstance(r, Response) else None for r in responses]
    responses = [r.token_ids if isinstance(r, Response) else r for r in responses]
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
        record = records[i]
        if record is not None and record.loss_mask is not None:
            response_mask[i, :m] = record.loss_mask
        if record is not None and record.mm_token_type_ids is not None:
            mm_types[i, n:n + m] = record.mm_token_type_ids
        # Padded response slots point at the last real position; they are masked anyway.
        logit_positions[i] = (n - 1 + torch.arange(r_width)).clamp(max=n + m - 1)
    own_images = any(r is not None and r.image_grid_thw is not None for r in records)
    owner = [k for p, r in zip(prompts, records) for k, item in ((0, p), (1, r))
             for _ in range(0 if item is None or item.image_grid_thw is None else len(item.image_grid_thw))]
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_types,
        **_cat_vision(prompts, records), "image_source": _image_source(prompts, records),
        "prompt_group": _prompt_group(prompts), "response_ids": response_ids, "response_mask": response_mask,
        "logit_positions": logit_positions, "response_images": torch.tensor(int(own_images)),
        "image_owner": torch.tensor(owner, dtype=torch.long) if owner else None,
    }
