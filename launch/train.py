r"""Train a vision-language policy with RLVR.

    python launch/train.py --config recipes/demo.yaml [key.sub=value ...]
    accelerate launch --config_file launch/accelerate/zero3.yaml --num_processes 8 launch/train.py \
        --config recipes/NAME.yaml [key.sub=value ...]
    sbatch --nodes=4 --gpus-per-node=8 launch/slurm/train.sbatch --config recipes/NAME.yaml [key.sub=value ...]

Overrides are dotted config keys, e.g. ``rollout.group_size=8 data.train_files=[a.jsonl,b.jsonl]
output_dir=runs/x``; ``resume=auto`` continues the run in output_dir from its newest checkpoint.

    python launch/train.py --help-config [SECTION]   every key with its default and meaning
                                                     (SECTION: trainer, data, model.lora, ... or one key)
    python -m rlvr.validate --config recipes/NAME.yaml --num-processes 8 [key=value ...]
                                                     the checks training runs, before any GPU time

Ctrl-C (or SIGTERM, or SLURM's SIGUSR1) checkpoints at the end of the current step and stops;
a second Ctrl-C aborts at once. Exit codes: 0 done, 2 a config/data/file problem (the message
says what to change), 1 a failure while running, 128+N stopped by signal N after a checkpoint.
The console shows progress and rlvr's messages; everything else is in <output_dir>/train.log.
"""

import sys


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    if argv and (argv[0] == "--help-config" or argv[0].startswith("--help-config=")):
        # Only rlvr.config (dataclasses and yaml): answers at once, without torch.
        from rlvr.config import ConfigError, help_config

        section = argv[0].split("=", 1)[1] if "=" in argv[0] else (argv[1] if len(argv) > 1 else None)
        try:
            print(help_config(section or None))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        # Heavy imports only after --help, so it answers at once.
        from rlvr.cli import run_training
    except KeyboardInterrupt:  # Ctrl-C while Python imports torch & co.: nothing has started yet
        print("\ninterrupted while starting; nothing to checkpoint", file=sys.stderr)
        return 130
    return run_training(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
