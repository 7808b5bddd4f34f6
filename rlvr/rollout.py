"""Rollout: sample G responses per prompt, keeping what is needed to recompute log-probs exactly.

A prompt is processed once (``encode_prompt``) into unpadded tensors. Generation batches
left-pad them; training batches lay out ``[prompt | response | right padding]``. Both give
every token the same 3-D M-RoPE position, because Qwen-VL computes positions over the
attention mask only, so the log-probs recorded while sampling equal those of the training
forward (tested in ``tests/test_logprobs.py``).

Sampling uses a fresh ``GenerationConfig`` built from ``rollout.*`` alone: a checkpoint's
own ``generation_config.json`` (Qwen-VL ships ``top_k=1``, ``repetition_penalty=1.05``)
would otherwise change the sampling distribution and make the recorded log-probs lie.

Reproducible sampling: given ``seeds`` (one per prompt), every response draws its tokens
from its own random stream, keyed by (prompt seed, sample index, decode position), with
the Gumbel-max trick (``SeededSampling``): the token is the argmax of the
temperature-scaled, top-k/top-p filtered logits plus Gumbel noise, which is a sample of
exactly that distribution. A response then depends on its prompt, its seed and the
weights only, not on which rank generated it, what else shared its batch, or how many
processes there are.

Which distribution the log-probs are of: each response records the log-probs of the
distribution it was actually drawn from (temperature-scaled, filtered, suppressed tokens
excluded). The update's ratio compares the training forward's temperature-scaled
log-probs, new against old, both over the full vocabulary, so with ``top_p < 1`` or
``top_k > 0`` the recorded values differ from the ratio's by the filter's renormalisation;
``rollout/logprob_diff_*`` shows that gap (and any numerical one) every step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from rlvr.config import DataConfig, RolloutConfig
from rlvr.data import Example, open_image, prompt_text
from rlvr.models import cache_kwarg, mrope_positions, never_sample_ids


@dataclass
class PromptInputs:
    """One prompt, processed once and unpadded."""

    input_ids: torch.Tensor  # [P]
    mm_token_type_ids: torch.Tensor  # [P]; 0 text, 1 image
    pixel_values: torch.Tensor | None  # [N_patches, D]
    image_grid_thw: torch.Tensor | None  # [N_images, 3]


@dataclass
class Response:
    """One sampled response to ``prompt_index`` (an index into the step's prompt list)."""

    prompt_index: int
    token_ids: torch.Tensor  # [R], up to and including the stop token
    logprobs: torch.Tensor  # [R], log-probs of the distribution sampled from (``SeededSampling``)
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)
    text: str = ""


def encode_prompt(example: Example, processor, cfg: DataConfig) -> PromptInputs:
    text = prompt_text(example, processor, cfg)
    images = [open_image(ref) for ref in example.images] or None
    enc = processor(text=[text], images=images, return_tensors="pt")
    return PromptInputs(
        input_ids=enc["input_ids"][0],
        mm_token_type_ids=enc["mm_token_type_ids"][0] if "mm_token_type_ids" in enc else torch.zeros_like(enc["input_ids"][0]),
        pixel_values=enc.get("pixel_values"),
        image_grid_thw=enc.get("image_grid_thw"),
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


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes, machines and Python versions."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def response_seeds(run_seed: int, step: int, indices: list[int]) -> list[int]:
    """One sampling seed per prompt slot of a step: keyed by the step, the slot's position and the row.

    ``indices`` are the step's dataset rows in order. The position keeps two draws of the
    same row in one step (an epoch boundary inside the step) from sampling identical
    groups; the step keeps a row's groups in different epochs apart.
    """
    return [mix_seed(run_seed, step, position, row) for position, row in enumerate(indices)]


# Counter-based noise: splitmix64 (Steele, Lea and Flood, 2014) over int64 tensors, whose
# products wrap modulo 2**64 as the algorithm needs. The constants are its published
# 64-bit ones, written as signed int64.
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)  # logical shift: int64 ``>>`` copies the sign bit


def _mix64(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def uniform_noise(seeds: torch.Tensor, position: int, vocab: int) -> torch.Tensor:
    """[b, V] uniforms in (0, 1), a pure function of (seed, decode position, token id).

    Every bit of the 64-bit seed counts (torch's CPU generator keeps only the low 32 of a
    seed, so seeds differing above them used to share a stream), no generator state is
    kept, and the numbers are the same on every device and for any batch layout.
    """
    step = ((position + 1) * _GOLDEN + 2**63) % 2**64 - 2**63  # as int64, wrapped like the tensors
    key = _mix64(_mix64(seeds) + step)  # [b]: one stream per (seed, position)
    tokens = torch.arange(1, vocab + 1, device=seeds.device, dtype=torch.int64) * _GOLDEN  # [V]
    bits = _shift_right(_mix64(key[:, None] + tokens), 40)  # [b, V]: the top 24 bits
    return (bits.float() + 0.5) * (1.0 / (1 << 24))


class SeededSampling:
    """Logits processor that samples each row from its own seeded stream and records what it sampled from.

    Runs as the last logits processor of a greedy ``generate``: the scores it gets already
    carry transformers' suppression (vision placeholders) and min-length masks. Sampling is
    ``argmax(filtered(logits / T) + G)``, with G standard Gumbel noise from
    ``uniform_noise(seed, position)``: a draw from ``softmax(filtered(logits / T))``
    (the Gumbel-max trick). Filtering is temperature first, then top-k, then top-p, as in
    transformers' samplers. ``greedy`` takes the argmax of the unscaled logits instead.

    ``logprobs`` collects, per decoding position, each row's log-prob of its chosen token
    under the distribution it was drawn from: the temperature-scaled, filtered one, with
    suppressed tokens outside the normaliser. The processor returns 0 for the chosen token
    and -inf elsewhere, so ``generate``'s argmax takes exactly that token.
    """

    def __init__(self, seeds: list[int], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 greedy: bool = False):
        self.seeds = torch.tensor(seeds, dtype=torch.int64)  # [b]
        self.temperature, self.top_k, self.top_p, self.greedy = temperature, top_k, top_p, greedy
        self.position = 0  # decode steps taken
        self.logprobs: list[torch.Tensor] = []  # per position [b]

    def _filter(self, scores: torch.Tensor) -> torch.Tensor:
        """Top-k, then top-p, of already temperature-scaled scores [b, V]."""
        if 0 < self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[:, -1:]  # [b, 1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)  # [b, V]
            probs = sorted_scores.softmax(-1)
            # drop a token when the tokens ranked above it already hold top_p of the mass
            drop_sorted = (probs.cumsum(-1) - probs) > self.top_p  # [b, V]; never the first token
            scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
        return scores

    def distribution(self, scores: torch.Tensor) -> torch.Tensor:
        """Log-probs [b, V] of the distribution a row samples from, given the raw scores [b, V]."""
        if self.greedy:
            return scores.float().log_softmax(-1)
        return self._filter(scores.float() / self.temperature).log_softmax(-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = self.distribution(scores)  # [b, V]
        if self.greedy:
            chosen = logp.argmax(-1)  # [b]
        else:
            uniform = uniform_noise(self.seeds.to(scores.device), self.position, scores.shape[-1])  # [b, V]
            chosen = (logp - torch.log(-torch.log(uniform))).argmax(-1)  # [b]
        self.logprobs.append(logp.gather(-1, chosen[:, None]).squeeze(-1))
        self.position += 1
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen[:, None], 0.0)


def sampling_config(cfg: RolloutConfig, stop_ids: list[int], pad_id: int, suppress_ids: list[int] | None = None):
    """transformers' greedy loop; the sampling itself is ``SeededSampling``'s."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=cfg.min_new_tokens or None,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        repetition_penalty=1.0,
        suppress_tokens=suppress_ids or None,
        num_beams=1,
        return_dict_in_generate=True,
    )


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
