"""Per-token log-probs of the response tokens, without materialising [B, T, V] logits.

The decoder runs once over ``[prompt | response]``; only the hidden states that predict
response tokens are kept. The output projection, log-softmax and the pick of the chosen
token then run over chunks of rows, so at most one chunk of fp32 logits is alive at a time,
in the no-grad pass and in both directions of the training pass.

Two implementations of that last step:

- ``_ChunkedSelectiveLogSoftmax`` (the default when the head is a plain ``nn.Linear``): a
  custom autograd Function that saves only the hidden states, the weight and one
  log-sum-exp per row. Its backward recomputes each chunk's logits, turns them into the
  logit gradient in place, and accumulates the weight gradient into one [V, H] fp32 buffer.
- ``_checkpointed_logprobs`` (the fallback): ``head(hidden)`` under activation
  checkpointing. It goes through the head's ``forward``, which DeepSpeed ZeRO-3 (weights
  gathered by module hooks), peft wrappers and other hooked heads need; but each chunk's
  backward allocates its own [V, H] weight gradient and several [B, C, V] fp32 buffers.

Log-probs are of the temperature-scaled distribution, the one that sampled the tokens.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rlvr.distributed import reduce_over_ranks
from rlvr.lora import inner_model
from rlvr.models import never_sample_ids
from rlvr.multimodal import (cache_kwarg, decoder_and_head, forward_inputs, mrope_positions, select_images,
                             shared_image_features)

# Rows per chunk for ``selective_logprobs``. The backward peak is the [V, H] fp32 weight
# gradient plus one fp32 [rows, V] chunk (297 MiB at 512 rows, V = 151936); at 1024 rows
# benchmarks/logprob_memory.py measured 26% of the naive peak (B=2, T=2048, H=2048), at 512
# rows 22% at the naive path's speed: the matmuls are still large enough to run at full rate.
DEFAULT_CHUNK_ROWS = 512


def _no_autocast(device_type: str):
    # The Function casts explicitly to the compute dtype it was given; an ambient autocast
    # would otherwise turn the fp32 weight-gradient accumulation (addmm_) into bf16.
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _exclude(logits: torch.Tensor, excluded: torch.Tensor | None) -> torch.Tensor:
    """``logits`` [..., V] with the ``excluded`` token ids at the dtype's lowest finite value, in place.

    Those tokens are never sampled (``rlvr.models.never_sample_ids``), so the policy is the
    softmax over the other tokens: their probability is exactly 0 and they leave the
    normaliser. A finite value rather than -inf keeps ``p * z`` in the entropy at 0, not nan.
    """
    if excluded is not None and excluded.numel():
        logits.index_fill_(-1, excluded, torch.finfo(logits.dtype).min)
    return logits


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  temperature: float, dtype: torch.dtype, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """Logits / temperature [C, V] of one chunk, at least fp32; the matmul runs in ``dtype``
    (as ``head(hidden).float()`` would, so rollout and training see the same rounding)."""
    logits = F.linear(hidden.to(dtype), weight, bias)  # [C, V]
    logits = logits.to(torch.promote_types(dtype, torch.float32))  # [C, V]
    if temperature != 1.0:
        logits.div_(temperature)  # in place: ``logits`` is a fresh buffer (linear output or its fp32 copy)
    return _exclude(logits, excluded)


class _ChunkedSelectiveLogSoftmax(torch.autograd.Function):
    """``log_softmax((hidden @ weight.T + bias) / T)[n, targets[n]]`` for each row n, chunk by chunk.

    Inputs: ``hidden`` [N, H], ``weight`` [V, H], ``bias`` [V] or None, ``targets`` [N] (long),
    ``temperature`` > 0, ``chunk_size`` rows per chunk, ``with_entropy``, ``compute_dtype``:
    the dtype of the projection matmul (the weight's, or the autocast dtype); logits and
    everything after them are fp32 (fp64 when ``compute_dtype`` is fp64, for exact tests).
    Outputs: chosen log-probs [N] (differentiable w.r.t. hidden, weight and bias) and, if
    ``with_entropy``, the entropy [N] of each row's distribution (no gradient), else None.

    Saved for backward: the inputs and the log-sum-exp [N], never the logits. Gradient of the
    chosen log-prob w.r.t. the raw logits z: ``(onehot(target) - softmax(z / T)) / T``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy, compute_dtype, excluded):
        n, acc = hidden.shape[0], torch.promote_types(compute_dtype, torch.float32)
        chosen = torch.empty(n, dtype=acc, device=hidden.device)  # [N]
        lse = torch.empty(n, dtype=acc, device=hidden.device)  # [N]
        entropy = torch.empty(n, dtype=acc, device=hidden.device) if with_entropy else None  # [N]
        with _no_autocast(hidden.device.type):
            w = weight.to(compute_dtype)  # no copy unless autocast asked for another dtype
            b = None if bias is None else bias.to(compute_dtype)
            for start in range(0, n, chunk_size):
                rows = slice(start, start + chunk_size)
                logits = _chunk_logits(hidden[rows], w, b, temperature, compute_dtype, excluded)  # [C, V]
                lse[rows] = torch.logsumexp(logits, dim=-1)  # [C]
                chosen[rows] = logits.gather(1, targets[rows].unsqueeze(1)).squeeze(1) - lse[rows]  # [C]
                if with_entropy:
                    # H = lse - sum_v p_v z_v; p overwrites nothing we still need but logits itself.
                    probs = logits.sub(lse[rows].unsqueeze(1)).exp_()  # [C, V]
                    entropy[rows] = lse[rows] - probs.mul_(logits).sum(-1)  # [C]
                    del probs
                del logits
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk_size, ctx.compute_dtype, ctx.excluded = temperature, chunk_size, compute_dtype, excluded
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return chosen, entropy

    @staticmethod
    def backward(ctx, grad_chosen, grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        if not (need_hidden or need_weight or need_bias):
            return (None,) * 9
        temperature, chunk_size, dtype = ctx.temperature, ctx.chunk_size, ctx.compute_dtype
        acc = lse.dtype  # fp32 (fp64 for fp64 inputs)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # [N, H]
        # One fp32 accumulator for the whole backward, however many chunks there are.
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None  # [V, H]
        grad_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_bias else None  # [V]
        scale = grad_chosen.to(acc) / temperature  # [N]: d loss / d chosen, times d (z / T) / d z
        with _no_autocast(hidden.device.type):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                h = hidden[rows]  # [C, H]
                # Recompute, then turn the logits buffer into d loss / d z in place:
                # softmax, times -g/T, plus g/T at the chosen token.
                grad_logits = _chunk_logits(h, w, b, temperature, dtype, ctx.excluded)  # [C, V]
                grad_logits.sub_(lse[rows].unsqueeze(1)).exp_()  # [C, V] softmax
                grad_logits.mul_(scale[rows].neg().unsqueeze(1))  # [C, V]
                grad_logits.scatter_add_(1, targets[rows].unsqueeze(1), scale[rows].unsqueeze(1))  # [C, V]
                if need_hidden:
                    # Same precision as autograd through head(hidden): the matmul in the compute dtype.
                    grad_hidden[rows] = (grad_logits.to(dtype) @ w).to(hidden.dtype)  # [C, H]
                if need_weight:
                    grad_weight.addmm_(grad_logits.t(), h.to(acc))  # [V, H] += [V, C] @ [C, H]
                if need_bias:
                    grad_bias.add_(grad_logits.sum(0))  # [V]
                del grad_logits
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


def selective_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_ROWS, *,
                       bias: torch.Tensor | None = None, excluded: torch.Tensor | None = None,
                       with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [...] of ``targets`` [...] under ``softmax((hidden @ weight.T + bias) / temperature)``.

    The log-probs are fp32 (fp64 for fp64 inputs, so tests can compare exactly).

    ``hidden`` [..., H] (any float dtype), ``weight`` [V, H], ``bias`` [V] or None. Leading
    dimensions are flattened into rows and processed ``chunk_size`` rows at a time; peak
    extra memory is about two fp32 [chunk_size, V] buffers plus, in backward, one fp32
    [V, H] weight-gradient accumulator. The projection matmul runs in the weight's dtype, or
    in the autocast dtype when autocast is on (as ``nn.Linear`` would). Returns the
    log-probs and, if ``with_entropy``, the entropy [...] of each row (no gradient),
    else None. Gradients flow to ``hidden``, ``weight`` and ``bias`` as far as they require them.
    ``excluded`` (token ids) leave the distribution: probability 0, outside the normaliser.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    lead = targets.shape
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    chosen, entropy = _ChunkedSelectiveLogSoftmax.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, targets.reshape(-1), float(temperature),
        int(chunk_size), with_entropy, dtype, excluded)
    return chosen.view(lead), (entropy.view(lead) if entropy is not None else None)


def _fusable(head: torch.nn.Module) -> bool:
    """Whether the Function may read ``head.weight`` directly instead of calling ``head``.

    Only a plain ``nn.Linear`` with no hooks and a materialised weight: ZeRO-3 partitions
    weights (empty tensors with a ``ds_id``) and gathers them in module hooks, accelerate's
    offload hooks move them, peft wrappers add adapter terms in ``forward``.
    """
    if type(head) is not torch.nn.Linear or head._forward_pre_hooks or head._forward_hooks:
        return False
    if hasattr(head, "_hf_hook"):
        return False
    weight = head.weight
    return not hasattr(weight, "ds_id") and weight.numel() > 0 and type(weight.data) is torch.Tensor


def _chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                    excluded: torch.Tensor | None = None):
    logits = _exclude(head(hidden).float() / temperature, excluded)  # [B, C, V]
    logprobs = torch.log_softmax(logits, dim=-1)  # [B, C, V]
    chosen = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, C]
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(-1)  # [B, C]
    return chosen, entropy


def _checkpointed_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                           temperature: float, chunk_size: int,
                           excluded: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fallback: ``head(hidden)`` over chunks of ``chunk_size`` positions, each checkpointed."""
    chosen, entropies = [], []
    for start in range(0, targets.shape[1], chunk_size):
        h, t = hidden[:, start:start + chunk_size], targets[:, start:start + chunk_size]
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_logprobs, head, h, t, temperature, excluded, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(head, h, t, temperature, excluded)
        chosen.append(lp)
        entropies.append(ent)
    return torch.cat(chosen, dim=1), torch.cat(entropies, dim=1)  # [B, R], [B, R]


def _can_share_prompts(decoder, batch: dict) -> bool:
    """Whether ``_shared_prompt_hidden`` applies: see its docstring for the conditions."""
    if batch.get("prompt_group") is None:
        return False
    text = decoder.config.get_text_config() if hasattr(decoder.config, "get_text_config") else decoder.config
    if any(t != "full_attention" for t in (getattr(text, "layer_types", None) or [])):
        return False  # linear attention: the recurrent state does not split into prompt and response parts
    if decoder.training and any(getattr(m, "gradient_checkpointing", False) for m in decoder.modules()):
        return False  # transformers drops the KV cache inside checkpointed layers
    # Every rank must take the same path, and a rank must not skip the vision tower in a decoder
    # call while another runs it (rlvr.multimodal.sync_vision_tower_calls does not cover calls with
    # a cache): every rank's prompts have images, and the responses' own images (tool
    # observations, encoded in the second call) are on every rank or on none.
    owner = batch.get("image_owner")
    prompt_images = owner is not None and bool((owner == 0).any())
    own = batch.get("response_images") is not None and bool(batch["response_images"])
    flags = torch.tensor([prompt_images, own, not own], dtype=torch.long, device=batch["input_ids"].device)
    prompts_ok, all_own, none_own = reduce_over_ranks(flags, "min").tolist()
    return bool(prompts_ok and (all_own or none_own))


def _shared_prompt_hidden(decoder, batch: dict) -> torch.Tensor:
    """Final hidden states [B, R, H] that predict the response tokens, each prompt computed once.

    The G samples of a prompt share its tokens, so under causal attention they share every
    hidden state and key/value of the prompt. The prompts of the batch's distinct groups
    run once (left-padded, all but their last token, images included), their KV cache is
    repeated to every row of the group (``index_select``: backward sums the rows'
    gradients into the one prompt computation), and then the rows run ``[last prompt token,
    response[:-1]]`` on top. Positions are the full sequences' 3-D M-RoPE positions, which
    depend on the unpadded tokens only, so every log-prob equals the plain forward's.
    Used when the decoder is full attention only (not Qwen3.5's linear attention), without
    gradient checkpointing (transformers drops the cache inside checkpointed layers), and,
    in multi-process runs, when every rank's batch has images.
    """
    from transformers import DynamicCache

    ids, types = batch["input_ids"], batch["mm_token_type_ids"]  # [B, L]
    response = batch["response_ids"]  # [B, R]
    group = batch["prompt_group"]  # [B]
    lengths = (batch["logit_positions"][:, 0] + 1).tolist()  # prompt tokens per row
    b, r = response.shape
    width = max(lengths)
    # Left-padded prompts, then right-padded responses: the generation layout.
    full_ids = ids.new_zeros(b, width + r)  # [B, Lp + R]
    full_types = types.new_zeros(b, width + r)  # [B, Lp + R]
    full_mask = batch["attention_mask"].new_zeros(b, width + r)  # [B, Lp + R]
    for row, n in enumerate(lengths):
        full_ids[row, width - n:width] = ids[row, :n]
        full_types[row, width - n:width] = types[row, :n]
        full_mask[row, width - n:width] = 1
    full_ids[:, width:] = response
    # Attention covers every real response token, trained or not (a multi-turn response's
    # observations have loss mask 0 but the model read them): the rows' own lengths.
    for row, (n, real) in enumerate(zip(lengths, batch["attention_mask"].sum(-1).tolist())):
        full_mask[row, width:width + int(real) - n] = 1
        full_types[row, width:width + int(real) - n] = types[row, n:int(real)]  # observation images
    positions, _ = mrope_positions(decoder, full_ids, full_types, full_mask, batch.get("image_grid_thw"))
    groups = group.tolist()
    first = torch.tensor([groups.index(g) for g in range(max(groups) + 1)], device=ids.device)  # each group's first row
    inputs = {"input_ids": full_ids[first, :width - 1], "attention_mask": full_mask[first, :width - 1],
              "mm_token_type_ids": full_types[first, :width - 1], "position_ids": positions[:, first, :width - 1]}
    source, owner = batch.get("image_source"), batch.get("image_owner")
    response_inputs = {}
    if source is not None:  # the prompts' distinct images, in the order of the groups' first rows
        owner = owner.tolist() if owner is not None else [0] * len(source)
        distinct = [i for i, s in enumerate(source.tolist()) if s == i and owner[i] == 0]
        inputs["pixel_values"], inputs["image_grid_thw"] = select_images(batch["pixel_values"],
                                                                         batch["image_grid_thw"], distinct)
        own = [i for i, o in enumerate(owner) if o == 1]  # the responses' images, row by row
        if own:
            pixels, grids = select_images(batch["pixel_values"], batch["image_grid_thw"], own)
            response_inputs = {"pixel_values": pixels, "image_grid_thw": grids,
                               "mm_token_type_ids": full_types[:, width - 1:width + r - 1]}
    cache = DynamicCache(config=decoder.config)
    key = cache_kwarg(decoder)
    decoder(**inputs, **{key: cache}, use_cache=True)
    cache.reorder_cache(group)  # [G_distinct, ...] -> [B, ...], differentiable
    out = decoder(input_ids=full_ids[:, width - 1:width + r - 1], attention_mask=full_mask[:, :width + r - 1],
                  position_ids=positions[:, :, width - 1:width + r - 1], **{key: cache}, use_cache=True,
                  **response_inputs)
    return out.last_hidden_state  # [B, R, H]: position t predicts response token t


def response_logprobs(model, batch: dict, *, temperature: float = 1.0, chunk_size: int = 512,
                      with_entropy: bool = False, share_prompts: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, R] fp32 of ``batch["response_ids"]`` (and their entropy [B, R] if asked).

    ``batch`` comes from ``rlvr.batch.collate_sequences``; padded response slots hold
    meaningless values and must be masked with ``batch["response_mask"]``.

    ``chunk_size`` is in positions per sequence, as ``trainer.logprob_chunk_size``: a chunk
    holds ``chunk_size`` x B rows, so the logits budget (``B x chunk_size x V`` fp32, what
    ``rlvr.validate`` estimates) is the same for both implementations. The fused path only
    projects real response tokens (rows where ``response_mask`` is set), so padding costs
    no head compute; its padded slots come back as 0.

    ``share_prompts``: rows of the same prompt (``batch["prompt_group"]``) compute the
    prompt, images included, once (``_shared_prompt_hidden``) where the model allows it.

    The distribution is the one rollouts sample from: vision placeholder tokens
    (``never_sample_ids``) are never sampled, so they are outside it (probability 0).
    """
    decoder, head = decoder_and_head(model)
    if share_prompts and _can_share_prompts(decoder, batch):
        hidden = _shared_prompt_hidden(decoder, batch)  # [B, R, H]
    else:
        # Rows of one prompt share its images: the vision tower encodes each once (shared_image_features).
        with shared_image_features(decoder, batch.get("image_source")):
            hidden = decoder(**forward_inputs(batch), use_cache=False).last_hidden_state  # [B, L, H]
        positions = batch["logit_positions"]  # [B, R]
        hidden = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # [B, R, H]
    targets = batch["response_ids"]  # [B, R]
    # The decoder's config: a DeepSpeed engine (the ZeRO-3 reference) has a `config` of its own.
    excluded = torch.tensor(never_sample_ids(decoder), dtype=torch.long, device=targets.device)  # [E]
    if not _fusable(head):
        logprobs, entropy = _checkpointed_logprobs(head, hidden, targets, temperature, chunk_size, excluded)
        return logprobs, (entropy if with_entropy else None)
    mask = batch.get("response_mask")
    mask = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask.bool()  # [B, R]
    rows, row_targets = hidden[mask], targets[mask]  # [n, H], [n]
    chosen, entropy = selective_logprobs(rows, head.weight, row_targets, temperature,
                                         chunk_size * targets.shape[0], bias=head.bias, excluded=excluded,
                                         with_entropy=with_entropy)  # [n], [n]
    logprobs = chosen.new_zeros(targets.shape).masked_scatter(mask, chosen)  # [B, R]
    if entropy is not None:
        entropy = entropy.new_zeros(targets.shape).masked_scatter(mask, entropy)  # [B, R]
    return logprobs, entropy


class PolicyLogprobs(torch.nn.Module):
    """The policy (a transformers or peft model) as a module whose forward gives response log-probs."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict, temperature: float = 1.0, chunk_size: int = 512, with_entropy: bool = False,
                share_prompts: bool = True):
        return response_logprobs(inner_model(self.policy), batch, temperature=temperature, chunk_size=chunk_size,
                                 with_entropy=with_entropy, share_prompts=share_prompts)
