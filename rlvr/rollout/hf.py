"""The HF engine: transformers' ``generate``, with group-shared prefill and seeded sampling.

Sampling uses a fresh ``GenerationConfig`` built from ``rollout.*`` alone: a checkpoint's
own ``generation_config.json`` (Qwen-VL ships ``top_k=1``, ``repetition_penalty=1.05``)
would otherwise change the sampling distribution and make the recorded log-probs lie.
transformers runs its greedy loop; the sampling itself is ``rlvr.rollout.sampling``'s.
"""

from __future__ import annotations

import contextlib

import torch

from rlvr.batch import PromptInputs, Response, collate_prompts
from rlvr.config import RolloutConfig
from rlvr.models import never_sample_ids
from rlvr.multimodal import cache_kwarg, mrope_positions
from rlvr.rollout.engine import RolloutEngine
from rlvr.rollout.sampling import SeededSampling, mix_seed, sampling_config


def _prefill_shared(model, prompts: list[PromptInputs], copies: list[int], pad_id: int, device) -> dict:
    """Encode and prefill each distinct prompt once; return ``generate`` inputs for its copies.

    The prompts are left-padded and run through the model without their last token, so the
    vision tower sees each image once and the KV cache holds every prompt token but one.
    The cache rows, and the model's M-RoPE offsets (``rope_deltas``: the gap between a
    token's index and its rotary position that images open up), are then repeated
    ``copies[i]`` times for prompt i. ``generate`` then computes only the last prompt token
    and the new ones, for every copy, with positions from the expanded offsets.
    """
    from transformers import DynamicCache

    batch = collate_prompts(prompts, pad_id)
    batch = {k: v.to(device) for k, v in batch.items() if v is not None}
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"]  # [P, L]
    decoder = model.model
    positions, deltas = mrope_positions(decoder, ids, types, mask, batch.get("image_grid_thw"))  # [3, P, L], [P, 1]
    # Images encoded before the model is called, as ``generate`` does: under ZeRO-3 a rank
    # without images runs the tower on a dummy image at this same point (sync_vision_tower_calls).
    encoded = {}
    if batch.get("pixel_values") is not None:
        encoded["image"] = decoder.get_image_features(pixel_values=batch["pixel_values"],
                                                      image_grid_thw=batch["image_grid_thw"], return_dict=True)
    cache = DynamicCache(config=model.config)
    key = cache_kwarg(model)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], mm_token_type_ids=types[:, :-1],
          position_ids=positions[:, :, :-1], mm_encoder_outputs=encoded, **{key: cache}, use_cache=True,
          logits_to_keep=1)
    expand = torch.repeat_interleave(torch.arange(len(prompts), device=device),
                                     torch.tensor(copies, device=device))  # [b]: row -> its prompt
    cache.reorder_cache(expand)  # index_select along the batch axis of every layer's state
    # generate places each new token at its text position + this offset
    decoder.rope_deltas = deltas.to(device).index_select(0, expand)  # [b, 1]
    return {
        "input_ids": batch["input_ids"].index_select(0, expand),  # [b, P]
        "attention_mask": batch["attention_mask"].index_select(0, expand),  # [b, P]
        "mm_token_type_ids": batch["mm_token_type_ids"].index_select(0, expand),  # [b, P]
        key: cache,
    }


@torch.no_grad()
def generate(model, prompts: list[PromptInputs], cfg: RolloutConfig, stop_ids: list[int], pad_id: int,
             greedy: bool = False, seeds: list[int] | None = None, synced_gpus: bool | None = None) -> list[Response]:
    """Sample ``cfg.group_size`` responses for each prompt, in micro-batches of ``cfg.micro_batch_size`` rows.

    Returns ``len(prompts) * group_size`` responses, prompt-major (the G responses of prompt 0 first).
    ``seeds`` (one per prompt) makes sampling reproducible per response (``SeededSampling``);
    without it the prompts' seeds are drawn from torch's global generator. Each response
    records the log-probs of the distribution it was sampled from (``SeededSampling``).
    ``synced_gpus`` is passed to ``model.generate`` (None: transformers decides; True under
    ZeRO-3 with partitioned weights). With ``cfg.shared_prefill`` each distinct prompt of a
    micro-batch is encoded and prefilled once (``_prefill_shared``); the tokens and
    log-probs are the same either way.
    """
    from transformers import LogitsProcessorList

    rows = [(i, j) for i in range(len(prompts)) for j in range(cfg.group_size)]
    if seeds is None:  # greedy decoding draws nothing
        seeds = [0] * len(prompts) if greedy else torch.randint(0, 2**62, (len(prompts),)).tolist()
    if len(seeds) != len(prompts):
        raise ValueError(f"generate got {len(seeds)} seeds for {len(prompts)} prompts; give one per prompt")
    gen_cfg = sampling_config(cfg, stop_ids, pad_id, never_sample_ids(model))
    device = next(model.parameters()).device
    stop = torch.tensor(stop_ids)
    out: list[Response] = []
    for start in range(0, len(rows), cfg.micro_batch_size):
        chunk = [i for i, _ in rows[start:start + cfg.micro_batch_size]]
        if cfg.shared_prefill:
            distinct = sorted(set(chunk))  # rows are prompt-major, so each prompt's copies are adjacent
            batch = _prefill_shared(model, [prompts[i] for i in distinct], [chunk.count(i) for i in distinct],
                                    pad_id, device)
        else:
            batch = collate_prompts([prompts[i] for i in chunk], pad_id)
            batch = {k: v.to(device) for k, v in batch.items() if v is not None}
        extra = {} if synced_gpus is None else {"synced_gpus": synced_gpus}
        row_seeds = [mix_seed(seeds[i], j) for i, j in rows[start:start + cfg.micro_batch_size]]
        sampler = SeededSampling(row_seeds, cfg.temperature, cfg.top_k, cfg.top_p, greedy=greedy)
        result = model.generate(**batch, generation_config=gen_cfg, logits_processor=LogitsProcessorList([sampler]),
                                **extra)
        new_tokens = result.sequences[:, batch["input_ids"].shape[1]:].cpu()  # [b, T]
        logprobs = torch.stack(sampler.logprobs, dim=1).cpu()  # [b, T]
        for row, prompt_index in enumerate(chunk):
            tokens = new_tokens[row]
            is_stop = torch.isin(tokens, stop)
            finished = bool(is_stop.any())
            length = int(is_stop.nonzero()[0, 0]) + 1 if finished else len(tokens)
            out.append(Response(prompt_index, tokens[:length].clone(), logprobs[row, :length].clone(), finished))
    return out


class HFEngine(RolloutEngine):
    """transformers' ``generate`` on the training process's own policy: the default and the reference.

    ``policy`` is a transformers model, or a function returning a context manager that yields
    ``(model, synced_gpus)`` for one rollout (the trainer's: under ZeRO-3 it gathers the
    weights, see ``rlvr.distributed.generation_model``). It samples from the live weights,
    so ``sync_weights`` has nothing to do. The model is in eval mode while it generates
    and gets its mode back afterwards.
    """

    name = "hf"

    def __init__(self, settings: RolloutConfig, stop_ids: list[int], pad_id: int, policy):
        super().__init__(settings, stop_ids, pad_id)
        self.policy = policy

    @contextlib.contextmanager
    def _model(self):
        if not callable(self.policy) or isinstance(self.policy, torch.nn.Module):
            yield self.policy, None
            return
        with self.policy() as (model, synced_gpus):
            yield model, synced_gpus

    def generate(self, prompts: list[PromptInputs], seeds: list[int] | None = None, *,
                 settings: RolloutConfig | None = None, greedy: bool = False) -> list[Response]:
        with self._model() as (model, synced_gpus):
            was_training = model.training
            model.eval()
            try:
                return generate(model, prompts, settings or self.settings, self.stop_ids, self.pad_id,
                                greedy=greedy, seeds=seeds, synced_gpus=synced_gpus)
            finally:
                model.train(was_training)
