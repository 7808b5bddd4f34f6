r"""Train a vision-language policy with RLVR.

    python launch/train.py --config recipes/demo.yaml [key.sub=value ...]
    accelerate launch --config_file launch/accelerate/zero3.yaml --num_processes 8 launch/train.py \
        --config recipes/NAME.yaml [key.sub=value ...]
    sbatch --nodes=4 --gpus-per-node=8 launch/slurm/train.sbatch --config recipes/NAME.yaml [key.sub=value ...]

Overrides are dotted config keys (see rlvr/config.py for all of them and their defaults),
e.g. ``rollout.group_size=8 data.train_files=[a.jsonl,b.jsonl] output_dir=runs/x``; ``resume=auto``
continues the run in output_dir from its newest checkpoint.
"""

import sys


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    # Heavy imports only after --help, so it answers at once.
    from rlvr.cli import run_training

    return run_training(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
