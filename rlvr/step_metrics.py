"""Metrics of one update step: tensors accumulated on the device, synchronised once at the end.

Three kinds, each combined exactly over micro-batches, minibatches and ranks:

- token means (``ratio/mean``, ``entropy``, ``sapo/gate_*``, ``clip_frac``, ...): the
  losses return each with its token count (``rlvr.aggregation.TOKEN_COUNT``); the step's value is
  the sum over all tokens of the step, on all ranks, divided by their number, so it does not
  depend on how the step was cut into micro-batches. A metric with no token anywhere in the
  step is left out (not 0, not nan);
- maxima (``*/max``): the largest value over the step and the ranks;
- per-rank values (``loss``, ``kl``, ``grad_norm``, ``lr``): summed over the step as given,
  then averaged over ranks. The loss and KL are divided by global counts already, so their
  micro-batch parts add up to the minibatch value and the rank mean is the global value.

Nothing is read back until ``result``: one all-reduce for the sums and counts, one for the
maxima, one host copy.
"""

from __future__ import annotations

import torch

from rlvr.aggregation import TOKEN_COUNT
from rlvr.distributed import reduce_over_ranks


class StepMetrics:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        self._token_sums: dict[str, torch.Tensor] = {}
        self._token_counts: dict[str, torch.Tensor] = {}
        self._maxes: dict[str, torch.Tensor] = {}
        self._per_rank: dict[str, torch.Tensor] = {}

    def _tensor(self, value) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float64, device=self.device).detach().reshape(())

    def add_token_mean(self, key: str, mean, count) -> None:
        """``mean`` over ``count`` tokens (mean is ignored when count is 0)."""
        count = self._tensor(count)
        total = self._tensor(mean) * count
        self._token_sums[key] = self._token_sums.get(key, 0) + total
        self._token_counts[key] = self._token_counts.get(key, 0) + count

    def add_token_sum(self, key: str, total, count) -> None:
        """A token mean given as its sum over ``count`` tokens."""
        self._token_sums[key] = self._token_sums.get(key, 0) + self._tensor(total)
        self._token_counts[key] = self._token_counts.get(key, 0) + self._tensor(count)

    def add_max(self, key: str, value) -> None:
        value = self._tensor(value)
        self._maxes[key] = torch.maximum(self._maxes[key], value) if key in self._maxes else value

    def add(self, key: str, value) -> None:
        """A per-rank value summed over the step (then averaged over ranks)."""
        self._per_rank[key] = self._per_rank.get(key, 0) + self._tensor(value)

    def set(self, key: str, value) -> None:
        self._per_rank[key] = self._tensor(value)

    def add_loss_metrics(self, metrics: dict[str, torch.Tensor], partial_sums: set[str], share: float) -> None:
        """One micro-batch's loss metrics: token means with their counts, maxima, and partial sums.

        ``partial_sums`` are divided by minibatch-wide counts already (their micro-batch values
        add up); ``share`` scales them to the step (1 / number of minibatches).
        """
        for key, value in metrics.items():
            if key.endswith(TOKEN_COUNT):
                continue
            if key + TOKEN_COUNT in metrics:
                self.add_token_mean(key, value, metrics[key + TOKEN_COUNT])
            elif key.endswith("/max"):
                self.add_max(key, value)
            elif key in partial_sums:
                self.add(key, value * share)
            else:
                raise ValueError(f"loss metric {key!r} is neither a token mean, a maximum nor a partial sum")

    def result(self, world_size: int = 1) -> dict[str, float]:
        """The step's values as floats; collectives when ``world_size`` > 1 (every rank must call it)."""
        token_keys, max_keys, rank_keys = sorted(self._token_sums), sorted(self._maxes), sorted(self._per_rank)
        empty = torch.zeros(0, dtype=torch.float64, device=self.device)
        stack = lambda d, keys: torch.stack([d[k] for k in keys]) if keys else empty  # noqa: E731
        sums = torch.cat([stack(self._token_sums, token_keys), stack(self._token_counts, token_keys),
                          stack(self._per_rank, rank_keys)])  # [2K + P]
        maxes = stack(self._maxes, max_keys)  # [M]
        if world_size > 1:
            reduce_over_ranks(sums, "sum")
            if len(maxes):
                reduce_over_ranks(maxes, "max")
        sums, maxes = sums.tolist(), maxes.tolist()
        k = len(token_keys)
        out = {key: sums[i] / sums[k + i] for i, key in enumerate(token_keys) if sums[k + i] > 0}
        out.update({key: sums[2 * k + i] / world_size for i, key in enumerate(rank_keys)})
        out.update(dict(zip(max_keys, maxes)))
        return out
