"""Check a training setup before it spends GPU hours; one readable report, non-zero exit on problems.

    python -m rlvr.validate --config recipes/X.yaml [key=value ...] [--num-processes 8 --zero-stage 3 ...]

What it checks, in order:
1. Config: the recipe and overrides resolve (unknown keys, types) and pass the cross-field
   rules of ``rlvr.config.check_config`` for the run's process count (``--num-processes``, else
   the launcher's WORLD_SIZE or accelerate's config): the same call training makes, so a
   batch that does not split over the ranks fails here too. The output folder: what
   ``resume`` will do there (``rlvr.checkpoint.plan_resume``, training's own decision): a
   folder holding a run without ``resume=``, a resume from which step, which config keys
   changed and whether training would accept them, or a finished run.
2. Rewards: every ``reward.functions`` entry imports, and returns one finite float per
   completion on a made-up two-row batch. The rollout engine: vLLM is installed when
   ``rollout.engine=vllm``.
3. Model and processor: the family is supported; the processor's special tokens (image,
   video, vision start/end, pad, end of turn) exist and have the ids the model config
   expects; the tokenizer fits the embedding matrix; the image processor's patch and merge
   sizes match the vision tower; the prompt budget plus the response budget fit the
   model's positions; there is a chat template.
4. Data (train and val files): every row goes through the same checks as training
   (``rlvr.data``): rows, usable rows, skipped rows by reason with examples, golds that do
   not parse, and image plus text prompt tokens (min/median/p95/max) against
   ``data.max_prompt_tokens``.
5. Memory: weights, gradients and optimizer state per GPU under the ZeRO stage, GPU count
   and LoRA rank given (or found in the accelerate environment), plus the generation KV
   cache, against ``--gpu-memory-gb`` or the local GPU.

``preflight(cfg)`` runs the cheap part (2, 3 and 5) for ``launch/train.py`` at start;
the data checks are done by training's own loader anyway. Both run ``_checks``, one sequence.
Modules: ``report`` (the report), ``setup`` (1-3), ``data`` (4), ``memory`` (5), ``cli``.
"""

from __future__ import annotations

from rlvr.validate.memory import (_environment_defaults, _environment_offload, check_memory, count_parameters,
                                  estimate_memory)
from rlvr.validate.data import check_data
from rlvr.validate.report import FAIL, INFO, OK, WARN, Report, _brief
from rlvr.validate.setup import (check_engine, check_model_processor, check_output_dir, check_rewards, load_model_config,
                                open_model)

__all__ = ["FAIL", "INFO", "OK", "WARN", "Report", "check_setup", "count_parameters", "estimate_memory",
           "load_model_config", "preflight"]


def preflight(cfg, processor=None, num_gpus: int | None = None, zero_stage: int | None = None,
              lora_rank: int | None = None, gpu_memory_gb: float | None = None,
              offload: tuple[bool, bool] | None = None) -> Report:
    """The cheap checks for the start of training: rewards, model/processor agreement, memory.

    Loads the processor unless given, and the model config (not the weights). GPUs, ZeRO
    stage and GPU memory default to the launcher's environment and the local GPU.
    """
    report = Report("rlvr preflight")
    _checks(cfg, report, processor=processor, data=False, num_gpus=num_gpus, zero_stage=zero_stage,
            lora_rank=lora_rank, gpu_memory_gb=gpu_memory_gb, offload=offload)
    return report


def check_setup(config_path: str | None, overrides: list[str], max_rows: int | None = None,
                allow_skipped: float = 0.0, num_gpus: int | None = None, zero_stage: int | None = None,
                lora_rank: int | None = None, gpu_memory_gb: float | None = None,
                offload: tuple[bool, bool] | None = None) -> Report:
    """Every check, in order; the report of ``python -m rlvr.validate``.

    ``num_gpus``: the processes the run will have (default: the launcher's environment, else 1);
    the config checks are training's own for that many processes.
    """
    from rlvr.config import ConfigError, check_config, load_config

    shown = config_path or "defaults"
    report = Report(f"rlvr validate: {shown}" + (f" with {len(overrides)} override(s)" if overrides else ""))
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as e:
        report.add("Config", FAIL, str(e))
        return report
    except OSError as e:
        report.add("Config", FAIL, f"cannot read {config_path}: {_brief(e)}")
        return report
    from rlvr.rollout.vllm_env import prepare_for_run

    prepare_for_run(cfg)  # vLLM's environment before the processor loads
    processes = num_gpus or _environment_defaults()[0]
    try:
        check_config(cfg, num_processes=processes)
        report.add("Config", OK, f"resolves and passes the cross-field checks for {processes} process"
                                 f"{'es' * (processes > 1)}")
    except ConfigError as e:
        report.add("Config", FAIL, f"{e}\n(checked for {processes} process{'es' * (processes > 1)}; "
                                   "set the count with --num-processes)")
    check_output_dir(cfg, report)
    _checks(cfg, report, data=True, max_rows=max_rows, allow_skipped=allow_skipped, num_gpus=num_gpus,
            zero_stage=zero_stage, lora_rank=lora_rank, gpu_memory_gb=gpu_memory_gb, offload=offload)
    return report


def _checks(cfg, report: Report, *, processor=None, data: bool, max_rows: int | None = None,
            allow_skipped: float = 0.0, num_gpus: int | None, zero_stage: int | None, lora_rank: int | None,
            gpu_memory_gb: float | None, offload: tuple[bool, bool] | None) -> None:
    """Rewards, model and processor, (data,) memory: the sequence preflight and check_setup share."""
    from rlvr.agent.rollout import with_tools_prompt
    from rlvr.config import ConfigError

    env_gpus, env_stage, env_memory = _environment_defaults()
    try:
        cfg = with_tools_prompt(cfg)  # with tools, prompts carry the tools section: count it in the budget
    except ConfigError as e:
        report.add("Tools", FAIL, str(e))
    check_rewards(cfg, report)
    check_engine(cfg, report)
    if processor is None:
        processor, config = open_model(cfg, report)
    else:
        try:
            config = load_model_config(cfg.model.name_or_path, cfg.model.trust_remote_code)
        except Exception as e:  # noqa: BLE001
            report.add("Model and processor", FAIL, f"cannot read the model config: {_brief(e)}")
            config = None
    if processor is not None and config is not None:
        check_model_processor(cfg, processor, config, report)
    if data:
        check_data(cfg, processor, report, max_rows, allow_skipped)
    if config is not None:
        check_memory(cfg, config, report, num_gpus or env_gpus, env_stage if zero_stage is None else zero_stage,
                     lora_rank, gpu_memory_gb if gpu_memory_gb is not None else env_memory,
                     offload if offload is not None else _environment_offload())
