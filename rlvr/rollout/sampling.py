"""Sampling: per-response seeds, counter-based uniforms, and the logits processor that samples.

Reproducible sampling: given one seed per prompt, every response draws its tokens from its
own random stream, keyed by (prompt seed, sample index, decode position): one uniform per
token position, a pure function of those (``uniform_noise``), turned into a token by the
inverse of the cumulative distribution of the temperature-scaled, top-k/top-p filtered
probabilities (``SeededSampling``), which is a sample of exactly that distribution. A
response then depends on its prompt, its seed and the weights only, not on which rank
generated it, what else shared its batch, or how many processes there are. One uniform a
position, not one per vocabulary entry as the Gumbel-max trick needs: at 152k tokens and 16
rows that was 28 ms of hashing per decode step on 2 CPU cores.

Which distribution the log-probs are of: each response records the log-probs of the
distribution it was actually drawn from (temperature-scaled, filtered, suppressed tokens
excluded). The update's ratio compares the training forward's temperature-scaled
log-probs, new against old, both over the full vocabulary less the never-sampled vision
tokens (``rlvr.logprobs``), so with ``top_p < 1`` or ``top_k > 0`` the recorded values
differ from the ratio's by the filter's renormalisation; ``rollout/logprob_diff_*`` shows
that gap (and any numerical one) every step.
"""

from __future__ import annotations

import hashlib

import torch

from rlvr.config import RolloutConfig


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


def uniform_noise(seeds: torch.Tensor, position: int) -> torch.Tensor:
    """[b] float64 uniforms in (0, 1), a pure function of (seed, decode position).

    Every bit of the 64-bit seed counts (torch's CPU generator keeps only the low 32 of a
    seed, so seeds differing above them used to share a stream), no generator state is
    kept, and the numbers are the same on every device and for any batch layout.
    """
    step = ((position + 1) * _GOLDEN + 2**63) % 2**64 - 2**63  # as int64, wrapped like the tensors
    return uniform_from_bits(_shift_right(_mix64(_mix64(seeds) + step), 12))  # [b] from the top 52 bits


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """52-bit integers -> float64 uniforms strictly inside (0, 1): (bits + 1/2) / 2**52.

    float64 has 53 significant bits, so the largest value, 1 - 2**-53, is exact and below 1.
    (24 bits in float32 round the largest to exactly 1.0: a sampler must never see that.)
    """
    return (bits.double() + 0.5) * (1.0 / (1 << 52))


def inverse_cdf(logp: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """[b] token ids: for each row of log-probs [b, V], the token whose cumulative-probability interval holds uniform [b].

    Computed in float64; a token with zero probability has an empty interval and is never
    chosen, also where rounding puts u at the very top (then the last token with mass is).
    """
    cdf = logp.double().exp().cumsum(-1)  # [b, V]; flat over tokens outside the distribution
    total = cdf[:, -1:]  # [b, 1]
    # below the total even where rounding puts u * total at it: the first index whose cdf
    # exceeds the target is then at most the last token with mass, and always one with mass
    target = torch.minimum(uniform.to(cdf.device, torch.float64)[:, None] * total,
                           torch.nextafter(total, torch.zeros_like(total)))  # [b, 1]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)  # [b]: first index with cdf > target


class SeededSampling:
    """Logits processor that samples each row from its own seeded stream and records what it sampled from.

    Runs as the last logits processor of a greedy ``generate``: the scores it gets already
    carry transformers' suppression (vision placeholders) and min-length masks. Sampling is
    the inverse CDF of ``softmax(filtered(logits / T))`` at ``uniform_noise(seed, position)``
    (in float64): token k is chosen when u falls in its interval of the cumulative
    probabilities, so a token outside the distribution (zero mass) never is. Filtering is
    temperature first, then top-k, then top-p, as in transformers' samplers. ``greedy``
    takes the argmax of the unscaled logits instead.

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
            chosen = inverse_cdf(logp, uniform_noise(self.seeds.to(scores.device), self.position))  # [b]
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
