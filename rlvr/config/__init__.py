"""One typed config tree for rlvr.

- ``rlvr.config.schema``: the dataclasses, every default, each section's own rules;
- ``rlvr.config.loader``: YAML recipe, then dotted command-line overrides, into those dataclasses;
- ``rlvr.config.checks``: the rules across sections (``check_config`` runs them all);
- ``rlvr.config.help``: ``--help-config``.

Flow: dataclass defaults -> merged with a YAML recipe (only the keys it changes) -> merged
with ``a.b=value`` overrides, in order -> ``check_config`` before any model is loaded.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from rlvr.config import loader
from rlvr.config.checks import batch_problems, check_config, process_problems
from rlvr.config.help import field_help, help_config
from rlvr.config.loader import COMMAND_LINE, parse_cli
from rlvr.config.schema import (AGGREGATIONS, ANSWER_EXTRACTIONS, ATTN_IMPLEMENTATIONS, DATA_FORMATS, DTYPES,
                                LORA_TARGETS, LOSS_NAMES, LR_SCHEDULES, AlgorithmConfig, CheckpointConfig, Config,
                                ConfigError, DataConfig, EvalConfig, LogConfig, LoraConfig, ModelConfig, Problems,
                                RewardConfig, RewardFunctionConfig, RolloutConfig, RolloutCorrectionConfig, TrainerConfig,
                                VLLMConfig)

__all__ = [
    "AGGREGATIONS", "ANSWER_EXTRACTIONS", "ATTN_IMPLEMENTATIONS", "COMMAND_LINE", "DATA_FORMATS", "DTYPES",
    "LORA_TARGETS", "LOSS_NAMES", "LR_SCHEDULES", "AlgorithmConfig", "CheckpointConfig", "Config", "ConfigError",
    "DataConfig", "EvalConfig", "LogConfig", "LoraConfig", "ModelConfig", "Problems", "RewardConfig",
    "RewardFunctionConfig", "RolloutConfig", "RolloutCorrectionConfig", "TrainerConfig", "VLLMConfig", "all_keys", "batch_problems", "check_config",
    "config_to_dict", "field_help", "help_config", "load_config", "parse_cli", "process_problems", "save_config",
]


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then each ``key=value`` override in order."""
    return loader.load(Config, path, overrides)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """The resolved config (every key, in definition order) as YAML that ``load_config`` reads back."""
    loader.save(cfg, path)


def all_keys() -> list[str]:
    """Every dotted leaf key, e.g. 'trainer.lr'."""
    return loader.all_keys(Config)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return loader.to_dict(cfg)
