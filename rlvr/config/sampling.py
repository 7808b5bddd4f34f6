"""The online difficulty filter's settings (``trainer.dynamic_sampling``); the mechanics are ``rlvr.difficulty``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlvr.config.problems import Problems


@dataclass
class DynamicSamplingConfig:
    # Retire a prompt (never draw it again in this run) once its group was all-correct on each of
    # its last k visits: every response's reward >= solved_reward. 0 = off. Saved in checkpoints.
    retire_after_solved: int = 0
    solved_reward: float = 1.0  # a response counts as correct at this reward or above (retirement)
    # DAPO's dynamic sampling (verl's filter_groups): drop groups whose rewards are all equal
    # (all right or all wrong: zero advantage, no gradient) and draw trainer.prompts_per_step more
    # prompts per round until the step has prompts_per_step groups with varied rewards
    filter_groups: bool = False
    # extra rounds per step at most; a batch still short after them is filled up with dropped
    # groups (zero advantage), so every step updates on exactly prompts_per_step groups
    max_extra_rounds: int = 3

    def problems(self) -> Problems:
        p = Problems()
        p.require(self.retire_after_solved >= 0, f"trainer.dynamic_sampling.retire_after_solved="
                  f"{self.retire_after_solved} must be >= 0 (0 = never retire; 2 or 3 retires prompts the policy "
                  "keeps solving).")
        p.require(math.isfinite(self.solved_reward), f"trainer.dynamic_sampling.solved_reward={self.solved_reward} "
                  "must be a finite reward, e.g. 1.0 for the binary numeric reward.")
        p.require(self.max_extra_rounds >= 0, f"trainer.dynamic_sampling.max_extra_rounds={self.max_extra_rounds} "
                  "must be >= 0.")
        p.require(not self.filter_groups or self.max_extra_rounds >= 1, "trainer.dynamic_sampling.filter_groups="
                  "true with max_extra_rounds=0 can never replace a dropped group; set max_extra_rounds >= 1 "
                  "(3 is typical) or filter_groups=false.")
        return p
