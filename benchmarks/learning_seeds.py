"""Does the demo recipe learn on every seed? Runs the grid task variant x trainer.seed and prints a table.

    .venv/bin/python benchmarks/learning_seeds.py [--variants plain half border] [--seeds 0 1 2 3 4]
        [--steps 250] [--recipe recipes/demo.yaml] [--out DIR] [--set KEY=VALUE ...]

Variants are the demo task (``plain``) and its distractor versions from
``rlvr.devtools.make_demo_data`` (``half``: the digit's colour on one half of the image and a
random colour on the other; ``border``: the digit's colour in a centred square and a random
colour around it; both with the question worded three ways). One tiny random Qwen2.5-VL
(``make_tiny_model --family qwen2_5_vl``, the demo's) is shared by every run, and each run is
``launch/train.py --config RECIPE`` with the assets, ``trainer.seed`` and ``--set`` overrides.
Runs go one at a time (each uses every core). Reported per run: mean reward of the first and
last 5 steps, the share of zero-variance groups and the token entropy over the last 5 steps,
wall time and CPU time (the cost to compare on a shared machine); per variant the worst and mean last-5 reward and how many seeds reach the
target (demo task 0.8, distractor variants 0.6).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# variant -> make_demo_data arguments
VARIANTS = {
    "plain": [],
    "half": ["--distractor", "half", "--phrasings", "3"],
    "border": ["--distractor", "border", "--phrasings", "3"],
}
TARGET = {"plain": 0.8}  # the demo's own task; every distractor variant: DISTRACTOR_TARGET
DISTRACTOR_TARGET = 0.6


def _run(cmd: list[str], log: str) -> int:
    env = {**os.environ, "PYTHONPATH": ROOT, "WANDB_MODE": "offline"}
    with open(log, "w", encoding="utf-8") as f:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode


def assets(out: str, variants: list[str]) -> dict[str, str]:
    """Build the model once and each variant's data once (kept between invocations)."""
    py = sys.executable
    model = os.path.join(out, "model")
    if not os.path.exists(os.path.join(model, "config.json")):
        rc = _run([py, "-m", "rlvr.devtools.make_tiny_model", "--family", "qwen2_5_vl", "--out", model],
                  os.path.join(out, "model.log"))
        if rc:
            sys.exit(f"make_tiny_model failed (exit {rc}); see {out}/model.log")
    paths = {"model": model}
    for v in variants:
        data = os.path.join(out, "data", v)
        if not os.path.exists(os.path.join(data, "train.jsonl")):
            os.makedirs(data, exist_ok=True)
            rc = _run([py, "-m", "rlvr.devtools.make_demo_data", "--out", data, *VARIANTS[v]],
                      os.path.join(data, "make.log"))
            if rc:
                sys.exit(f"make_demo_data failed for {v} (exit {rc}); see {data}/make.log")
        paths[v] = data
    return paths


def _children_cpu_s() -> float:
    """User + system CPU seconds of finished child processes: the run's cost on a busy machine, where wall time is not."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summarise(metrics_path: str) -> dict[str, float]:
    rows = [json.loads(line) for line in open(metrics_path, encoding="utf-8") if line.strip()]
    reward = [r["reward/mean"] for r in rows]
    last = rows[-5:]
    return {
        "steps": len(rows),
        "first5": sum(reward[:5]) / len(reward[:5]),
        "last5": sum(reward[-5:]) / len(reward[-5:]),
        "zero_std": sum(r["zero_std_groups"] for r in last) / len(last),
        "entropy": sum(r.get("entropy", float("nan")) for r in last) / len(last),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=None, help="trainer.max_steps; default: the recipe's")
    p.add_argument("--recipe", default=os.path.join(ROOT, "recipes", "demo.yaml"))
    p.add_argument("--out", default="runs/learning-seeds", help="assets and runs; assets are reused")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides for every run")
    p.add_argument("--tag", default="", help="suffix of the run folders, to keep several settings apart (--tag=-x)")
    p.add_argument("--report-only", action="store_true", help="print the table of runs already in --out, run nothing")
    args = p.parse_args(argv)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    paths = {} if args.report_only else assets(out, args.variants)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    results = []
    for v in args.variants:
        for seed in args.seeds:
            run = os.path.join(out, "runs", f"{v}-s{seed}{args.tag}")
            if args.report_only:
                if os.path.exists(os.path.join(run, "learning_seeds.json")):
                    results.append(json.load(open(os.path.join(run, "learning_seeds.json"), encoding="utf-8")))
                continue
            cmd = [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config", args.recipe,
                   f"model.name_or_path={paths['model']}", f"data.train_files={paths[v]}/train.jsonl",
                   "data.val_files=[]", f"output_dir={run}", f"trainer.seed={seed}", "log.progress_bar=false",
                   "checkpoint.save_final_model=false", *args.set]
            if args.steps is not None:
                cmd.append(f"trainer.max_steps={args.steps}")
            if os.path.exists(os.path.join(run, "metrics.jsonl")):
                os.remove(os.path.join(run, "metrics.jsonl"))  # a fresh run, not a resume
            start, cpu0 = time.monotonic(), _children_cpu_s()
            rc = _run(cmd, os.path.join(out, "runs", f"{v}-s{seed}{args.tag}.log"))
            wall, cpu = time.monotonic() - start, _children_cpu_s() - cpu0
            if rc:
                print(f"{v} seed {seed}: training failed (exit {rc}); see {run}.log", flush=True)
                continue
            row = {"variant": v, "seed": seed, "wall_s": wall, "cpu_s": cpu, **summarise(os.path.join(run, "metrics.jsonl"))}
            results.append(row)
            with open(os.path.join(run, "learning_seeds.json"), "w", encoding="utf-8") as f:
                json.dump(row, f)
            print(f"{v:7s} seed {seed}: last-5 {row['last5']:.3f}  first-5 {row['first5']:.3f}  "
                  f"zero-std {row['zero_std']:.2f}  entropy {row['entropy']:.2f}  {wall:.0f} s ({cpu:.0f} s CPU)", flush=True)

    print(f"\nrecipe {os.path.relpath(args.recipe, ROOT)} {' '.join(args.set)}".rstrip())
    print(f"{'variant':8s} {'seed':>4s} {'first-5':>8s} {'last-5':>8s} {'zero-std':>9s} {'entropy':>8s} {'wall s':>7s} "
          f"{'CPU s':>6s}")
    for r in results:
        print(f"{r['variant']:8s} {r['seed']:4d} {r['first5']:8.3f} {r['last5']:8.3f} {r['zero_std']:9.2f} "
              f"{r['entropy']:8.2f} {r['wall_s']:7.0f} {r.get('cpu_s', float('nan')):6.0f}")
    print()
    for v in args.variants:
        last = [r["last5"] for r in results if r["variant"] == v]
        if last:
            target = TARGET.get(v, DISTRACTOR_TARGET)
            print(f"{v:8s} last-5 worst {min(last):.3f} mean {sum(last) / len(last):.3f}; "
                  f"{sum(x >= target for x in last)}/{len(last)} seeds >= {target}")
    return 0 if len(results) == len(args.variants) * len(args.seeds) else 1


if __name__ == "__main__":
    sys.exit(main())
