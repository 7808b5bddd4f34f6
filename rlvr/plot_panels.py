"""What the plots show: panels (which metrics, how), and runs read from ``metrics.jsonl``."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from rlvr.metrics import read_metrics


@dataclass
class Series:
    key: str
    label: str
    scale: float = 1.0  # e.g. 100 for shares shown in percent


@dataclass
class Panel:
    name: str  # file stem
    title: str
    y_label: str
    series: Callable[[list[str]], list[Series]]  # from the keys a run logged
    missing: str  # shown when no series has data
    smooth: bool = False  # add a moving average over noisy per-step values
    markers: bool = False  # sparse points (evaluations)
    stacked: bool = False  # stacked areas (time breakdown)
    y_range: tuple[float | None, float | None] = (None, None)
    unit_range: bool = False  # 0..1 axis when every value is in [0, 1] (a reward beyond it: automatic)
    notes: list[str] = field(default_factory=list)


def _fixed(*items: tuple[str, str] | tuple[str, str, float]) -> Callable[[list[str]], list[Series]]:
    return lambda keys: [Series(*item) for item in items if item[0] in keys]


def _eval_series(keys: list[str]) -> list[Series]:
    out = [Series("eval/pass@1", "pass@1 (mean over samples)")] if "eval/pass@1" in keys else []
    for pattern, fmt in ((r"^eval/pass@(\d+)$", "pass@{k} (unbiased)"), (r"^eval/maj@(\d+)$", "maj@{k} (majority vote)")):
        ks = sorted(int(m.group(1)) for k in keys if (m := re.match(pattern, k)))
        ks = [k for k in ks if k > 1 or "maj" in pattern]
        if ks:
            out.append(Series(pattern.replace(r"(\d+)", str(ks[-1])).strip("^$"), fmt.format(k=ks[-1])))
    if "eval/greedy" in keys:
        out.append(Series("eval/greedy", "greedy decoding"))
    return out


PANELS = [
    Panel("reward", "Training reward", "mean reward of the step's rollouts (0-1)",
          _fixed(("reward/mean", "reward")), "no reward/mean logged", smooth=True, unit_range=True),
    Panel("eval_accuracy", "Validation accuracy", "fraction correct on data.val_files (0-1)", _eval_series,
          "no evaluation in this run (set data.val_files)", markers=True, y_range=(0, 1)),
    Panel("response_length", "Response length", "tokens per response",
          _fixed(("response_length/mean", "mean (training rollouts)"), ("response_length/max", "max (training rollouts)"),
                 ("eval/response_length/mean", "mean (evaluation)")),
          "no response_length/* logged", smooth=True),
    Panel("entropy", "Policy entropy", "nats per response token", _fixed(("entropy", "entropy")),
          "no entropy logged", smooth=True),
    Panel("zero_std_groups", "Groups with no learning signal", "share of groups with all G rewards equal",
          _fixed(("zero_std_groups", "zero-variance groups")), "no zero_std_groups logged", smooth=True,
          y_range=(0, 1)),
    Panel("sapo_gate", "SAPO gate statistics", "gate weight (1 at ratio 1) / share of tokens",
          _fixed(("sapo/gate_pos", "mean gate weight, A > 0"), ("sapo/gate_neg", "mean gate weight, A < 0"),
                 ("sapo/gate_below_half", "share of tokens with gate < 0.5"),
                 ("clip_frac", "clip fraction (clipped losses)")),
          "no sapo/* or clip_frac logged", smooth=True),
    Panel("timing", "Time per step", "seconds",
          _fixed(("time/sync_s", "weight sync"), ("time/rollout_s", "rollout"), ("time/reward_s", "reward"),
                 ("time/old_logprobs_s", "old log-probs"), ("time/update_s", "update"), ("time/eval_s", "evaluation")),
          "no time/* logged", stacked=True),
]


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    label: str
    rows: list[dict[str, Any]]

    @property
    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def points(self, key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for i, row in enumerate(self.rows):
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                xs.append(float(row.get("step", i + 1)))
                ys.append(float(value) * scale)
        return xs, ys


def run_label(run_dir: str) -> str:
    """``log.run_name`` or the folder name, with the loss: ``demo-sapo (sapo)``."""
    import yaml

    name, loss = os.path.basename(os.path.abspath(run_dir)), None
    path = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                cfg = yaml.safe_load(f) or {}
            name = (cfg.get("log") or {}).get("run_name") or name
            loss = (cfg.get("algorithm") or {}).get("loss")
        except (OSError, yaml.YAMLError):
            pass
    return f"{name} ({loss})" if loss and loss not in name else name


def load_runs(run_dirs: Sequence[str]) -> list[Run]:
    runs = []
    for d in run_dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{d}: no such run folder")
        rows = read_metrics(d)
        if not rows:
            raise FileNotFoundError(f"{d}: no metrics.jsonl with any rows (is this a run folder?)")
        runs.append(Run(run_label(d), rows))
    labels = [r.label for r in runs]
    for run, d in zip(runs, run_dirs):  # same labels: add the parent folder
        if labels.count(run.label) > 1:
            run.label = f"{os.path.basename(os.path.dirname(os.path.abspath(d)))}/{run.label}"
    return runs
