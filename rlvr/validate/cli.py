"""``python -m rlvr.validate``: the command line."""

from __future__ import annotations

import argparse
import os

from rlvr.validate.memory import _accelerate_file, _default_accelerate_processes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rlvr.validate",
        description="Check a training setup before launching: config, rewards, model and processor, data, memory. "
                    "Prints one report; exits 1 if anything must be fixed.")
    p.add_argument("--config", help="recipe YAML")
    p.add_argument("--rows", type=int, default=None, help="check only the first N rows of each data file")
    p.add_argument("--allow-skipped", type=float, default=0.0, metavar="SHARE",
                   help="accept up to this share of skipped rows per file as a warning (default 0: any is a problem)")
    p.add_argument("--num-processes", "--num-gpus", dest="num_gpus", type=int, default=None,
                   help="processes (GPUs) of the run; the batch must split evenly over them (default: WORLD_SIZE, "
                        "else --accelerate-config's or accelerate's default config's num_processes, else 1)")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None,
                   help="DeepSpeed ZeRO stage, 0 = none (default: from the accelerate environment)")
    p.add_argument("--accelerate-config", help="accelerate config YAML to take num_processes and zero_stage from")
    p.add_argument("--lora-rank", type=int, default=None,
                   help="LoRA rank for the memory estimate (default: model.lora.rank where the config has it, else 0)")
    p.add_argument("--gpu-memory-gb", type=float, default=None, help="memory per GPU (default: the local GPU's)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_intermixed_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"expected key=value overrides, got {bad}")
    num_gpus, zero_stage, offload = args.num_gpus, args.zero_stage, None
    if args.accelerate_config:
        try:
            procs, stage, offload = _accelerate_file(args.accelerate_config)
        except (OSError, ValueError) as e:
            p.error(f"--accelerate-config {args.accelerate_config}: {e}")
        num_gpus = num_gpus or procs
        zero_stage = zero_stage if zero_stage is not None else stage
    elif num_gpus is None and "WORLD_SIZE" not in os.environ:
        num_gpus = _default_accelerate_processes()
    if num_gpus is not None and num_gpus < 1:
        p.error(f"--num-processes {num_gpus}: must be >= 1")
    import logging

    logging.basicConfig(level=logging.ERROR)  # the report says it all; rlvr.data's skip warnings would repeat it
    from rlvr.validate import check_setup

    report = check_setup(args.config, args.overrides, args.rows, args.allow_skipped, num_gpus, zero_stage,
                            args.lora_rank, args.gpu_memory_gb, offload)
    print(report.render())
    return 1 if report.failed else 0
