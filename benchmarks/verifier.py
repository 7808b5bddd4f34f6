"""Verifier throughput on synthetic chain-of-thought completions, against plain math-verify.

    .venv/bin/python benchmarks/verifier.py [--runs 5] [--workers 2] [--plain 2000] [--mixed 1000] [--latex 300]
                                            [--slow 200]

Completions are 1-2k characters of visual chain-of-thought (counting objects, reading
charts, inline LaTeX arithmetic) ending in a final answer, generated with a seeded RNG.
Two sets:

- plain: final answers that are plain numbers (integers, decimals, fractions, thousands
  separators, percents, units) - the common case, which should never touch sympy;
- mixed: RL-shaped groups (8 samples per prompt sharing few distinct answers), 30% of
  prompts with LaTeX answers such as 3\\sqrt{3}/2 or \\frac{\\pi}{4}, plus some completions
  with no final answer;
- latex: every answer a closed form (\\sqrt, \\pi, sums), few repeats: read by the fast path's
  closed-form parser since the second pass, no longer by math-verify;
- slow: the worst case, every answer something only math-verify reads (\\sin, \\log_2,
  \\binom), few repeats.

Even with the cache off, identical answers within one batch are verified once (the mixed
set's groups); the slow set shows the per-answer cost of the slow path without that help.

Reported: verifications per second with the cache disabled (a fair per-answer measure)
and, separately, with the cache on (cold at the start of each run; repeats within the run
hit it); the share of answers decided on the fast path; plain math-verify
(``math_verify.parse`` of the completion + ``verify`` against the parsed gold, one process,
as peers call it) on the same completions. Medians of ``--runs`` runs; worker start-up is
excluded (and printed). Batches of 256, as a training step would pass them.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlvr.rewards import Verifier  # noqa: E402

OBJECTS = ["red cubes", "blue spheres", "green cylinders", "yellow cones", "purple blocks", "small metal balls"]
SENTENCES = [
    "Looking at the image, I can see {a} {obj} on the left side and {b} more near the back.",
    "Let me count again carefully: the first row has {a} items and the second row has {b} items.",
    "The bar for {year} reaches about {a}, while the bar for {year2} is at {b}.",
    "So far the total is ${a} + {b} = {s}$.",
    "Each shelf holds {a} boxes, and there are {b} shelves, so $ {a} \\times {b} = {p} $.",
    "The angle at the top looks like {a}^\\circ, and the other one is {b}^\\circ.",
    "Wait, I should double-check whether the {obj} behind the large one are counted twice.",
    "The table lists {a} students in class A and {b} in class B; the difference is {d}.",
    "From the legend, the dashed line represents {obj}, which appear {a} times.",
    "Hmm, the shadow might hide another object, but the outline suggests only {a} of them.",
    "Converting, $\\frac{{{a}}}{{{b}}}$ of the area is shaded.",
]


def reasoning(rng: random.Random, target_chars: int) -> str:
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < target_chars:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        parts.append(rng.choice(SENTENCES).format(
            a=a, b=b, s=a + b, p=a * b, d=abs(a - b), obj=rng.choice(OBJECTS),
            year=rng.randint(1990, 2020), year2=rng.randint(1990, 2020)))
    return " ".join(parts)


def plain_answer(rng: random.Random) -> tuple[str, str]:
    """(LaTeX answer as the model writes it, gold text)."""
    kind = rng.randrange(8)
    n = rng.randint(1, 500)
    if kind == 0:
        return str(n), str(n)
    if kind == 1:
        return f"{n}.{rng.randint(0, 99):02d}", f"{n}.{rng.randint(0, 99):02d}"
    if kind == 2:
        p, q = rng.randint(1, 20), rng.randint(2, 20)
        return f"\\frac{{{p}}}{{{q}}}", str(Fraction(p, q))
    if kind == 3:
        big = rng.randint(1000, 9_999_999)
        return f"{big:,}", str(big)
    if kind == 4:
        return f"{n}\\%", rng.choice([str(n), str(Fraction(n, 100))])
    if kind == 5:
        return f"{n} \\text{{ cm}}", str(n)
    if kind == 6:
        return f"-{n}", f"-{n}"
    return f"{n} {rng.choice(OBJECTS)}", str(n)


def latex_answer(rng: random.Random) -> tuple[str, str]:
    """A non-plain LaTeX answer and its decimal gold (10 significant digits)."""
    k, n = rng.randint(1, 9), rng.choice([2, 3, 5, 6, 7, 10, 11])
    m = rng.randint(2, 8)
    choices = [
        (f"\\sqrt{{{n}}}", math.sqrt(n)),
        (f"{k}\\sqrt{{{n}}}", k * math.sqrt(n)),
        (f"\\frac{{{k}\\sqrt{{{n}}}}}{{{m}}}", k * math.sqrt(n) / m),
        (f"{k}\\pi", k * math.pi),
        (f"\\frac{{\\pi}}{{{m}}}", math.pi / m),
        (f"{k}\\sqrt{{{n}}}/{m}", k * math.sqrt(n) / m),
        (f"\\sqrt{{{n}}} + {k}", math.sqrt(n) + k),
    ]
    text, value = rng.choice(choices)
    return text, f"{value:.10g}"


def slow_answer(rng: random.Random) -> tuple[str, str]:
    """An answer only math-verify reads (trig, logs, binomials) and its gold."""
    k, n = rng.randint(1, 9), rng.randint(4, 12)
    choices = [
        (f"{k}\\sin(\\frac{{\\pi}}{{6}})", f"{k / 2:g}"),
        (f"\\log_{{2}}({2 ** k})", str(k)),
        (f"\\binom{{{n}}}{{2}}", str(n * (n - 1) // 2)),
        (f"{k}\\cos(\\frac{{\\pi}}{{3}})", f"{k / 2:g}"),
        (f"\\tan(\\frac{{\\pi}}{{4}}) + {k}", str(k + 1)),
    ]
    return rng.choice(choices)


def completion(rng: random.Random, answer: str | None) -> str:
    body = reasoning(rng, rng.randint(1000, 1900))
    if answer is None:
        return body  # truncated: no final answer
    ending = rng.random()
    if ending < 0.9:
        return f"{body}\nTherefore, the final answer is $\\boxed{{{answer}}}$."
    return f"{body}\nThe answer is ${answer}$."


def plain_set(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    completions, golds = [], []
    for _ in range(n):
        answer, gold = plain_answer(rng)
        if rng.random() < 0.4:  # a wrong answer: same shape, different number
            answer, _ = plain_answer(rng)
        completions.append(completion(rng, answer))
        golds.append(gold)
    return completions, golds


def mixed_set(rng: random.Random, n: int, group: int = 8) -> tuple[list[str], list[str]]:
    completions, golds = [], []
    while len(completions) < n:
        make = latex_answer if rng.random() < 0.3 else plain_answer
        answer, gold = make(rng)
        distinct = [answer] + [make(rng)[0] for _ in range(rng.randint(0, 2))]  # a group's few answers
        for _ in range(group):
            choice = rng.choice(distinct) if rng.random() > 0.05 else None
            completions.append(completion(rng, choice))
            golds.append(gold)
    return completions[:n], golds[:n]


def _distinct_set(rng: random.Random, n: int, make_answer) -> tuple[list[str], list[str]]:
    """``n`` completions whose answers (almost) never repeat: half right, half another draw."""
    completions, golds = [], []
    for _ in range(n):
        answer, gold = make_answer(rng)
        if rng.random() < 0.5:
            answer, _ = make_answer(rng)
        completions.append(completion(rng, answer))
        golds.append(gold)
    return completions, golds


def latex_set(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    """Closed forms and LaTeX (the fast path evaluates them), none repeating."""
    return _distinct_set(rng, n, latex_answer)


def slow_set(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    """Worst case: every answer needs math-verify and (almost) none repeats."""
    return _distinct_set(rng, n, slow_answer)


def time_ours(verifier: Verifier, completions: list[str], golds: list[str], batch: int = 256):
    start = time.perf_counter()
    results = []
    for i in range(0, len(completions), batch):
        results += verifier.verify_batch(completions[i:i + batch], golds[i:i + batch])
    return time.perf_counter() - start, results


def time_math_verify(completions: list[str], golds: list[str]):
    from math_verify import parse, verify

    start = time.perf_counter()
    rewards = []
    for text, gold in zip(completions, golds):
        rewards.append(float(verify(parse("$" + gold + "$"), parse(text))))
    return time.perf_counter() - start, rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plain", type=int, default=2000, help="completions in the plain-number set")
    parser.add_argument("--mixed", type=int, default=1000, help="completions in the mixed set")
    parser.add_argument("--latex", type=int, default=300, help="completions in the closed-form set")
    parser.add_argument("--slow", type=int, default=200, help="completions in the math-verify-only worst-case set")
    parser.add_argument("--math-verify-n", type=int, default=300, help="completions per set for plain math-verify")
    parser.add_argument("--math-verify-runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    sets = {"plain": plain_set(rng, args.plain), "mixed": mixed_set(rng, args.mixed),
            "latex": latex_set(rng, args.latex), "slow": slow_set(rng, args.slow)}
    lengths = [len(c) for cs, _ in sets.values() for c in cs]
    print(f"completions: plain {args.plain}, mixed {args.mixed}, latex {args.latex}, slow {args.slow}; "
          f"{min(lengths)}-{max(lengths)} chars "
          f"(mean {statistics.mean(lengths):.0f}); seed {args.seed}; {args.runs} runs, median")

    ours: dict[str, list[float]] = {}
    modes = {"cache off": Verifier(num_workers=args.workers, cache_size=0, batch_timeout_s=None),
             "cache on ": Verifier(num_workers=args.workers, cache_size=100_000, batch_timeout_s=None)}
    for label, verifier in modes.items():
        start = time.perf_counter()
        verifier.warm_up(wait=True)
        print(f"{label}: worker start-up ({args.workers} warm workers) {time.perf_counter() - start:.2f}s (not timed)")
    for name, (completions, golds) in sets.items():
        times: dict[str, list[float]] = {label: [] for label in modes}
        last: dict[str, list] = {}
        for _ in range(args.runs):  # interleaved, so machine noise hits both modes alike
            for label, verifier in modes.items():
                verifier._cache = type(verifier._cache)(verifier._cache.size)  # cold at the start of each run
                elapsed, last[label] = time_ours(verifier, completions, golds)
                times[label].append(elapsed)
        for label in modes:
            t, results = statistics.median(times[label]), last[label]
            fast = sum(r.fast_path for r in results) / len(results)
            hits = sum(r.cached for r in results) / len(results)
            acc = sum(r.reward for r in results) / len(results)
            outcomes = {o: sum(r.outcome == o for r in results) for o in ("correct", "wrong", "no_answer", "timeout", "error")}
            print(f"rlvr verifier, {label}, {name:5}: {len(completions) / t:8.0f} verifications/s "
                  f"(median {t:.3f}s for {len(completions)}); fast path {fast:.1%}; cache hits {hits:.1%}; "
                  f"accuracy {acc:.3f}; {outcomes}")
        ours[name] = [r.reward for r in last["cache off"]]
    for verifier in modes.values():
        verifier.close()

    for name, (completions, golds) in sets.items():
        n = min(args.math_verify_n, len(completions))
        times = []
        for _ in range(args.math_verify_runs):
            elapsed, rewards = time_math_verify(completions[:n], golds[:n])
            times.append(elapsed)
        t = statistics.median(times)
        agree = sum(a == b for a, b in zip(rewards, ours[name][:n])) / n
        print(f"plain math-verify (1 process), {name:5}: {n / t:8.0f} verifications/s "
              f"(median {t:.3f}s for {n}); accuracy {sum(rewards) / n:.3f}; agrees with rlvr on {agree:.1%}")


if __name__ == "__main__":
    main()
