"""Online difficulty filtering during RL, and the "always solved" rule the synthesis' stage 4 shares.

- ``all_correct`` / ``pass_rate``: one group's rewards against a threshold. Stage 4
  (``rlvr.synth.verify``) drops a query a weaker model always solves with the same rule.
- ``SolvedRecord``: per dataset row, how many of its latest visits in a row were all-correct; a
  row whose streak reaches k (``trainer.dynamic_sampling.retire_after_solved``) is retired and never
  drawn again in the run.
- ``DifficultyFilter``: a step's groups. It draws ``trainer.prompts_per_step`` rows past the retired
  ones, has every rank sample its share, and records every group's outcome. With
  ``filter_groups`` (DAPO's dynamic sampling, verl's ``filter_groups``) groups whose rewards are
  all equal carry no gradient: it draws further rounds of ``prompts_per_step`` rows until
  ``prompts_per_step`` groups have varied rewards, or ``max_extra_rounds`` were drawn; a batch
  still short is filled with the earliest dropped groups (zero advantage), so every update has
  exactly ``prompts_per_step`` groups and the batch splits over ranks as ``micro_batching`` set up.

Many processes: every round's rows are the same on every rank (one seeded order, one retired set);
rank r samples positions r, r + world, ... of the round, and the groups' rewards (with
``filter_groups``, their responses too) are gathered, so every rank records the same outcomes,
retires the same rows and picks the same groups: the first ``prompts_per_step`` with varied
rewards in draw order. Rank r updates on picks r, r + world, ... Which rows are drawn, their seeds
(``response_seeds`` over the step's whole draw order: round k's slots are k * prompts_per_step
onwards) and which are retired or picked do not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rlvr.config import TrainerConfig


def _floats(rewards: Iterable) -> list[float]:
    return [float(r) for r in rewards]


def all_correct(rewards: Iterable, threshold: float = 1.0) -> bool:
    """Every reward of the group is >= ``threshold`` (pass rate 1); an empty group is not solved."""
    values = _floats(rewards)
    return bool(values) and all(r >= threshold for r in values)


def pass_rate(rewards: Iterable, threshold: float = 1.0) -> float:
    """The share of the group's rewards that are >= ``threshold``."""
    values = _floats(rewards)
    if not values:
        raise ValueError("pass_rate of an empty group: there are no rewards to count")
    return sum(r >= threshold for r in values) / len(values)


def informative(rewards: Iterable) -> bool:
    """The rewards are not all equal: the group-normalised advantage is non-zero for some response."""
    values = _floats(rewards)
    return bool(values) and max(values) != min(values)


class SolvedRecord:
    """Per dataset row, the number of its latest visits in a row whose group was all-correct; rows
    that reached ``k`` are retired. ``k = 0``: nothing is recorded or retired."""

    def __init__(self, k: int, threshold: float = 1.0):
        self.k, self.threshold = k, threshold
        self.streaks: dict[int, int] = {}  # row -> all-correct visits in a row (absent = 0)
        self.retired: set[int] = set()

    def visit(self, row: int, rewards: Iterable) -> bool:
        """Record one group of ``row``; True when this visit retires it."""
        if self.k <= 0 or row in self.retired:
            return False
        if not all_correct(rewards, self.threshold):
            self.streaks.pop(row, None)
            return False
        self.streaks[row] = self.streaks.get(row, 0) + 1
        if self.streaks[row] < self.k:
            return False
        del self.streaks[row]
        self.retired.add(row)
        return True

    def state_dict(self) -> dict:
        """JSON-ready (the checkpoint's trainer_state.json): row lists, not dicts with int keys."""
        return {"k": self.k, "streaks": sorted([row, n] for row, n in self.streaks.items()),
                "retired": sorted(self.retired)}

    def load_state_dict(self, state: dict | None) -> None:
        """Continue from ``state``; None (a checkpoint from before the record existed) is a fresh record."""
        state = state or {}
        self.streaks = {int(row): int(n) for row, n in state.get("streaks", [])}
        self.retired = {int(row) for row in state.get("retired", [])}


@dataclass
class Group:
    """One prompt's sampled group: its rewards, what the update needs (``payload``, gathered over
    ranks with ``filter_groups``) and what only the rank that sampled it keeps (``local``)."""

    rewards: list[float]
    payload: Any = None
    local: Any = None


@dataclass
class StepBatch:
    """The groups a step updates on, and what was drawn for them."""

    rows: list[int]  # the update's rows, all ranks, in draw order: prompts_per_step of them
    mine: list[int]  # this rank's share: rows[rank::world]
    groups: list[Group]  # the groups of ``mine``, in order (``local`` is set for those this rank sampled)
    first_round: list[list[float]]  # every rank's rewards of the first round: the step's ordinary draw
    metrics: dict[str, float] = field(default_factory=dict)

    def update_inputs(self, encode: Callable[[int], Any]) -> tuple[list, list, list[float]]:
        """(prompts, responses, rewards) of this rank's share, prompt-major. A group another rank
        sampled has no ``local`` prompt: ``encode(row)`` makes it; its responses are renumbered."""
        prompts, responses, rewards = [], [], []
        for k, (row, group) in enumerate(zip(self.mine, self.groups)):
            prompts.append(group.local if group.local is not None else encode(row))
            responses += [dataclasses.replace(r, prompt_index=k) for r in group.payload]
            rewards += group.rewards
        return prompts, responses, rewards


# sample(round, rows, seeds) -> one Group per row, this rank's; gather(obj) -> [obj of rank 0, 1, ...]
Sample = Callable[[int, list[int], list[int]], list[Group]]
Gather = Callable[[Any], list]


class DifficultyFilter:
    """Draws a step's prompts past the retired rows and picks the groups the update uses (module docstring)."""

    def __init__(self, trainer: TrainerConfig, sampler, rank: int = 0, world: int = 1):
        """Settings from ``trainer`` (dynamic_sampling, prompts_per_step, seed); ``sampler``: the run's EpochSampler."""
        settings = trainer.dynamic_sampling
        self.settings, self.sampler, self.size, self.seed = settings, sampler, trainer.prompts_per_step, trainer.seed
        self.rank, self.world = rank, world
        self.record = SolvedRecord(settings.retire_after_solved, settings.solved_reward)

    def collect(self, step: int, sample: Sample, gather: Gather) -> StepBatch:
        from rlvr.rollout.sampling import response_seeds

        size, rank, world, filtering = self.size, self.rank, self.world, self.settings.filter_groups
        drawn: list[int] = []  # rows in draw order, all ranks
        groups: list[Group] = []  # by draw position; payloads of other ranks' groups only with filter_groups
        varied: list[int] = []  # draw positions of groups with varied rewards
        retired_before = len(self.record.retired)
        for round_ in range(1 + (self.settings.max_extra_rounds if filtering else 0)):
            rows = self.sampler.take(size, skip=self.record.retired)  # the same on every rank
            drawn += rows
            seeds = response_seeds(self.seed, step, drawn)[round_ * size:]
            local = sample(round_, rows[rank::world], seeds[rank::world])
            by_rank = gather([Group(g.rewards, g.payload if filtering else None) for g in local])
            for j, row in enumerate(rows):  # slot j was rank j % world's (j // world)-th prompt
                group = local[j // world] if j % world == rank else by_rank[j % world][j // world]
                groups.append(group)
                self.record.visit(row, group.rewards)
                if informative(group.rewards):
                    varied.append(len(groups) - 1)
            if not filtering or len(varied) >= size:
                break
        if filtering:
            kept, uniform = varied[:size], sorted(set(range(len(groups))) - set(varied))
            picked = sorted(kept + uniform[:size - len(kept)])  # padding: the earliest dropped
        else:
            picked = list(range(size))
        return StepBatch(rows=[drawn[p] for p in picked], mine=[drawn[p] for p in picked[rank::world]],
                         groups=[groups[p] for p in picked[rank::world]],
                         first_round=[g.rewards for g in groups[:size]],
                         metrics=self._metrics(len(drawn), len(varied), picked, varied, retired_before))

    def _metrics(self, drawn: int, varied: int, picked: list[int], varied_at: list[int],
                 retired_before: int) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.record.k > 0:
            out["data/retired"] = float(len(self.record.retired))
            out["data/retired_this_step"] = float(len(self.record.retired) - retired_before)
        if self.settings.filter_groups:
            kept = len(set(picked) & set(varied_at))
            out.update({"dynamic/rounds": float(drawn // self.size), "dynamic/groups_drawn": float(drawn),
                        "dynamic/groups_varied": float(varied), "dynamic/groups_kept": float(kept),
                        "dynamic/groups_padded": float(len(picked) - kept),
                        "dynamic/groups_dropped": float(drawn - len(picked)),
                        "dynamic/batch_full": float(kept == len(picked))})
        return out

    def state_dict(self) -> dict:
        return self.record.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self.record.load_state_dict(state)
