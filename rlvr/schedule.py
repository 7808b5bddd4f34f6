"""The learning-rate schedule: linear warmup, then constant or a cosine, continuous across resumes."""

from __future__ import annotations

import math


class LRSchedule:
    """The learning-rate multiplier at optimizer step k (0-based): linear warmup over
    ``trainer.warmup_steps``, then constant or a cosine from 1 down to ``trainer.min_lr_ratio``
    at the last step. ``LambdaLR`` calls it.

    Continuity on resume: a resumed run whose length changed (``trainer.max_steps`` raised or
    lowered) keeps the learning rate it had and anneals the rest of the way over the new
    remaining steps. The cosine is a function of progress p in [0, 1]; at the resume step s0
    the old schedule had reached p0, and from there p goes linearly from p0 to 1 over steps
    s0 .. new total: lr(s0) is unchanged, the shape stays a cosine's tail, and the run still
    ends at the floor. So a finished run extended further trains its extra steps at the floor
    (p0 = 1): the learning rate never jumps back up. Resuming with the same length changes
    nothing. The anchor (s0, p0) is saved in every checkpoint, so a second extension composes.
    """

    def __init__(self, schedule: str, warmup: int, min_ratio: float, total: int):
        self.schedule, self.warmup, self.min_ratio, self.total = schedule, warmup, min_ratio, total
        self.anchor: tuple[int, float] | None = None  # (optimizer step, cosine progress there)

    @classmethod
    def from_config(cls, cfg) -> "LRSchedule":
        t = cfg.trainer
        return cls(t.lr_schedule, t.warmup_steps, t.min_lr_ratio, t.max_steps * t.num_minibatches)

    def progress(self, step: int) -> float:
        if self.anchor is not None and step >= self.anchor[0]:
            s0, p0 = self.anchor
            return min(1.0, p0 + (1 - p0) * (step - s0) / max(1, self.total - s0))
        return min(1.0, max(0.0, (step - self.warmup) / max(1, self.total - self.warmup)))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.schedule == "constant":
            return 1.0
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * self.progress(step)))

    def state_dict(self) -> dict:
        return {"total": self.total, "anchor": list(self.anchor) if self.anchor else None}

    def resume(self, saved: dict, step: int) -> None:
        """Continue the schedule ``saved`` (a ``state_dict``) from optimizer step ``step``."""
        old = LRSchedule(self.schedule, self.warmup, self.min_ratio, int(saved["total"]))
        old.anchor = tuple(saved["anchor"]) if saved.get("anchor") else None
        if old.total == self.total or step <= self.warmup:
            self.anchor = old.anchor  # same length, or still warming up: the schedules agree from here
        else:
            self.anchor = (step, old.progress(step))
