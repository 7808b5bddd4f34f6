"""Where metrics go: ``metrics.jsonl``, wandb, and the console. Main process only.

The console: a progress bar when it is a terminal; otherwise (a file, a SLURM log, or
``log.progress_bar=false``) a plain line every ``log.print_every`` steps (about 20 per run by
default) with reward, eval accuracy, time per step and the ETA, instead of a bar's
``\r``-joined redraws.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any

from rlvr.config import Config, config_to_dict

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    """'45s', '7m21s', '3h05m'; '?' when unknown."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Tracker:
    """Appends one JSON object per step to ``<output_dir>/metrics.jsonl``; mirrors to wandb and a progress bar."""

    def __init__(self, cfg: Config, enabled: bool, total_steps: int, start_step: int = 0,
                 wandb_id: str | None = None):
        self.enabled = enabled
        self.path = os.path.join(cfg.output_dir, "metrics.jsonl")
        self.wandb_run = None
        self.bar = None
        if not enabled:
            return
        os.makedirs(cfg.output_dir, exist_ok=True)
        if cfg.log.wandb:
            import wandb

            self.wandb_run = wandb.init(
                project=cfg.log.project, name=cfg.log.run_name, tags=cfg.log.tags or None, group=cfg.log.group,
                config=config_to_dict(cfg), dir=cfg.output_dir, id=wandb_id, resume="allow" if wandb_id else None,
            )
        from rlvr.metrics import ProgressPostfix

        self.postfix = ProgressPostfix()  # reward, eval accuracy, s/step
        self.total, self.start_step, self.started = total_steps, start_step, time.monotonic()
        self.every = cfg.log.print_every or max(1, round(total_steps / 20))
        if cfg.log.progress_bar and _is_terminal(sys.stderr):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="rlvr", dynamic_ncols=True)

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: _plain(v) for k, v in metrics.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        fields = self.postfix(row)
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)  # before update(), which redraws
            self.bar.update(1)
            return
        step = row["step"]
        if step % self.every == 0 or step == self.total or step == self.start_step + 1:
            logger.info(self.progress_line(step, fields))

    def progress_line(self, step: int, fields: dict[str, str], now: float | None = None) -> str:
        """'step 40/250 (16%) reward 0.312 eval 0.400 s/step 2.1 | elapsed 1m24s, ETA 7m21s'."""
        done = step - self.start_step  # steps run by this process (a resumed run counts from its start)
        elapsed = (time.monotonic() if now is None else now) - self.started
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        shown = " ".join(f"{k} {v}" for k, v in fields.items())
        return (f"step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%) {shown} | "
                f"elapsed {_duration(elapsed)}, ETA {_duration(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
