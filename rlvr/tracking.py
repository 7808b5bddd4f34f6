"""Where metrics go: ``metrics.jsonl``, wandb, and the console. Main process only."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from rlvr.config import Config, config_to_dict

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


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
        if cfg.log.progress_bar:
            from tqdm.auto import tqdm

            from rlvr.metrics import ProgressPostfix

            self.bar = tqdm(total=total_steps, initial=start_step, desc="rlvr", dynamic_ncols=True)
            self.postfix = ProgressPostfix()  # step, reward, eval accuracy, s/step; tqdm adds the ETA

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
        if self.bar is not None:
            self.bar.set_postfix(self.postfix(row), refresh=False)  # before update(), which redraws
            self.bar.update(1)
        elif row["step"] % 10 == 0:
            logger.info("step %d reward %.3f loss %.4f", row["step"], row.get("reward/mean", float("nan")),
                        row.get("loss", float("nan")))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
