"""Per-token log-probs of the response tokens, without materialising [B, T, V] logits.

The decoder runs once over ``[prompt | response]``; only the hidden states that predict
response tokens are kept, and the output projection plus log-softmax run over chunks of
``chunk_size`` positions. Each chunk is recomputed in backward (activation checkpointing),
so at most one chunk's fp32 logits are alive at a time, in both the no-grad and the
training pass.

Log-probs are of the temperature-scaled distribution, the one that sampled the tokens.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from rlvr.models import decoder_and_head, forward_inputs


def _chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float):
    logits = head(hidden).float() / temperature  # [B, C, V]
    logprobs = torch.log_softmax(logits, dim=-1)  # [B, C, V]
    chosen = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, C]
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(-1)  # [B, C]
    return chosen, entropy


def response_logprobs(model, batch: dict, *, temperature: float = 1.0, chunk_size: int = 512,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, R] of ``batch["response_ids"]`` (and their entropy [B, R] if asked).

    ``batch`` comes from ``rlvr.rollout.collate_sequences``; padded response slots hold
    meaningless values and must be masked with ``batch["response_mask"]``.
    """
    decoder, head = decoder_and_head(model)
    hidden = decoder(**forward_inputs(batch), use_cache=False).last_hidden_state  # [B, L, H]
    positions = batch["logit_positions"]  # [B, R]
    hidden = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # [B, R, H]
    targets = batch["response_ids"]  # [B, R]
    chosen, entropies = [], []
    for start in range(0, targets.shape[1], chunk_size):
        h, t = hidden[:, start:start + chunk_size], targets[:, start:start + chunk_size]
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_logprobs, head, h, t, temperature, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(head, h, t, temperature)
        chosen.append(lp)
        entropies.append(ent)
    logprobs = torch.cat(chosen, dim=1)  # [B, R]
    return logprobs, (torch.cat(entropies, dim=1) if with_entropy else None)
