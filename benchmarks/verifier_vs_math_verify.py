"""The verifier against plain math-verify, side by side, on the case tables.

    .venv/bin/python benchmarks/verifier_vs_math_verify.py [--cases FILE ...] [--show all|differ|none]

The expected verdict of every case is the project's policy (README, "The numeric verifier"),
written by hand in the tables: tests/data/verifier_cases.jsonl (rules, category "core") and
tests/data/verifier_policy_cases.jsonl (held-out style, by category). For each category it
prints how often each verifier agrees with the expected reward, then every case where either
one disagrees, with the reason each gave (our outcome and detail; what math-verify extracted).

Plain math-verify is called as peers call it: ``verify(parse(gold), parse(completion))`` with
default settings (a gold without math delimiters is wrapped in ``$...$``). It runs in a child
process, one case at a time, killed and restarted when a case takes longer than ``--timeout``
seconds (such a case scores 0, "timeout"). Rows of the ``last_number`` policy have no
math-verify counterpart and are left out of its columns. An unusable gold is expected to score
0 (our outcome ``error``); math-verify is scored on its reward alone.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlvr.rewards import Verifier  # noqa: E402

DEFAULT_CASES = [ROOT / "tests" / "data" / "verifier_cases.jsonl", ROOT / "tests" / "data" / "verifier_policy_cases.jsonl"]

# The child: one JSON case per stdin line -> one JSON verdict per stdout line.
CHILD = r"""
import json, logging, sys
logging.disable(logging.CRITICAL)
from math_verify import parse, verify
def gold_text(g):
    return g if any(d in g for d in ("$", "\\(", "\\[", "\\boxed")) else "$" + g + "$"
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    case = json.loads(line)
    try:
        gold = parse(gold_text(case["gold"]))
        pred = parse(case["completion"])
        ok = bool(verify(gold, pred))
        why = f"gold parsed {[str(g) for g in gold][:2]}, answer parsed {[str(p) for p in pred][:2]}"
    except BaseException as e:
        ok, why = False, f"{type(e).__name__}: {str(e)[:100]}"
    print(json.dumps({"reward": 1.0 if ok else 0.0, "why": why[:300]}), flush=True)
"""


class MathVerifyChild:
    """Plain math-verify in a child process with a hard per-case time limit."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=dict(os.environ))
        self._read(120.0)  # {"ready": true}

    def _read(self, timeout: float) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def verify(self, completion: str, gold: str) -> tuple[float, str]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"completion": completion, "gold": gold}) + "\n")
        self.proc.stdin.flush()
        reply = self._read(self.timeout_s)
        if reply is None:
            self.close()
            return 0.0, f"timeout: no verdict within {self.timeout_s:g}s (child killed)"
        return reply["reward"], reply["why"]

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                row.setdefault("category", "core")
                row["where"] = f"{path.name}:{n}"
                rows.append(row)
    return rows


def short(text: str, n: int = 90) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else "..." + text[-(n - 3):]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=Path, nargs="+", default=DEFAULT_CASES)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per case for plain math-verify")
    parser.add_argument("--show", choices=("all", "differ", "none"), default="differ",
                        help="list every case, the cases where a verifier disagrees with the expected verdict, or none")
    args = parser.parse_args(argv)
    logging.getLogger("rlvr.rewards").setLevel(logging.ERROR)  # unusable golds are expected rows here

    rows = load(args.cases)
    ours: dict[int, object] = {}
    start = time.perf_counter()
    for policy in ("boxed", "last_number"):
        idx = [i for i, r in enumerate(rows) if r.get("policy", "boxed") == policy]
        with Verifier(answer_extraction=policy, batch_timeout_s=None) as verifier:
            results = verifier.verify_batch([rows[i]["completion"] for i in idx], [rows[i]["gold"] for i in idx])
        ours.update(zip(idx, results))
    ours_s = time.perf_counter() - start

    child = MathVerifyChild(args.timeout)
    theirs: dict[int, tuple[float, str]] = {}
    start = time.perf_counter()
    try:
        for i, r in enumerate(rows):
            if r.get("policy", "boxed") == "boxed":
                theirs[i] = child.verify(r["completion"], r["gold"])
    finally:
        child.close()
    theirs_s = time.perf_counter() - start

    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for i, r in enumerate(rows):
        s = stats[r["category"]]
        s["n"] += 1
        s["ours"] += ours[i].reward == r["reward"]  # type: ignore[attr-defined]
        if i in theirs:
            s["mv_n"] += 1
            s["mv"] += theirs[i][0] == r["reward"]
            s["both_n"] += 1
            s["ours_on_mv_rows"] += ours[i].reward == r["reward"]  # type: ignore[attr-defined]
    print(f"{len(rows)} cases from {', '.join(p.name for p in args.cases)}; rlvr verifier {ours_s:.1f}s, "
          f"plain math-verify {theirs_s:.1f}s (one process)\n")
    print(f"{'category':14} {'cases':>5}  {'rlvr agrees':>12}  {'math-verify agrees':>19}")
    total = collections.Counter()
    for category in sorted(stats):
        s = stats[category]
        total.update(s)
        mv = f"{s['mv'] / s['mv_n']:7.1%} ({s['mv']}/{s['mv_n']})" if s["mv_n"] else "n/a"
        print(f"{category:14} {s['n']:5}  {s['ours'] / s['n']:6.1%} ({s['ours']}/{s['n']})".ljust(40) + f"  {mv}")
    print(f"{'all':14} {total['n']:5}  {total['ours'] / total['n']:6.1%} ({total['ours']}/{total['n']})".ljust(40)
          + f"  {total['mv'] / total['mv_n']:7.1%} ({total['mv']}/{total['mv_n']})")
    print(f"(on the {total['both_n']} rows both score: rlvr {total['ours_on_mv_rows'] / total['both_n']:.1%}, "
          f"math-verify {total['mv'] / total['mv_n']:.1%})")

    if args.show == "none":
        return
    print("\ncases where a verifier differs from the expected reward" if args.show == "differ" else "\nall cases")
    for i, r in enumerate(rows):
        o = ours[i]
        mv = theirs.get(i)
        ours_ok = o.reward == r["reward"]  # type: ignore[attr-defined]
        mv_ok = mv is None or mv[0] == r["reward"]
        if args.show == "differ" and ours_ok and mv_ok:
            continue
        print(f"- [{r['category']}] {r['where']} {r['note']}\n    completion {short(r['completion'])!r}  gold {short(r['gold'], 50)!r}"
              f"  expected {r['reward']:.0f}")
        print(f"    rlvr        {o.reward:.0f} {'ok ' if ours_ok else 'BAD'} {o.outcome}: {o.detail}")  # type: ignore[attr-defined]
        if mv is not None:
            print(f"    math-verify {mv[0]:.0f} {'ok ' if mv_ok else 'BAD'} {mv[1]}")


if __name__ == "__main__":
    main()
