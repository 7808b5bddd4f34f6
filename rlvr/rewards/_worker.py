"""The math-verify worker process (slow path). Started by ``pool.WorkerPool``; never imported
by the training process itself, which therefore never imports sympy.

Protocol over two pipes (multiprocessing.connection framing, pickled tuples):

    parent -> worker: (job_id, answer_text, [(numerator, denominator), ...], rel_tol) | None
    worker -> parent: ("ready", pid) | ("fatal", message) | (job_id, "ok", correct, detail)
                      | (job_id, "error", message)

The worker needs no timeout of its own: the parent kills it when an answer takes too long.
math-verify's own SIGALRM timeouts are therefore switched off (``*_timeout=None``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

WARM_UP = ("\\frac{\\sqrt{2}}{2}", [(7071, 10000)], 1e-3)


def _numeric_value(expr):
    """expr evaluated to 30 significant digits, or None if it is not a finite real number
    (a set, an equation, a symbol) or sympy cannot guarantee the precision."""
    import sympy

    try:
        value = expr.evalf(30, strict=True)
    except Exception:  # noqa: BLE001 - PrecisionExhausted, unevaluable objects
        return None
    if isinstance(value, (sympy.Float, sympy.Rational)) and value.is_finite:
        return value
    return None


def check(answer: str, golds: list[tuple[int, int]], rel_tol: float) -> tuple[bool, str]:
    """Is the LaTeX/plain-text expression ``answer`` equal to any of the gold numbers?

    Correct when, for a non-integer gold, the expression evaluates to a real number within
    rel_tol of it, or when math-verify's ``verify`` says so (exact/symbolic, with its own
    rounding of floats to 6 decimals). Integer golds need math-verify's exact/symbolic match.

    Shortcut (same verdicts, ~10x faster for wrong answers): an expression without floats
    whose 30-digit value differs from every gold by more than 1e-12 relative cannot be
    exactly equal to any of them, so math-verify's symbolic simplification is skipped.
    """
    import sympy
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    parsed = parse(
        "\\boxed{" + answer + "}",
        extraction_config=(LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()),
        parsing_timeout=None,
    )
    exprs = [p for p in parsed if isinstance(p, sympy.Basic)]
    if not exprs:
        return False, "math-verify could not parse the answer"
    tol = sympy.Rational(repr(rel_tol))
    candidates = [sympy.Rational(p, q) for p, q in golds]
    certainly_different = True
    for expr in exprs:
        value = _numeric_value(expr)
        if value is None or expr.atoms(sympy.Float):
            certainly_different = False
        if value is None:
            continue
        for gold in candidates:
            scale = max(abs(value), abs(gold))
            if gold.q != 1 and abs(value - gold) <= tol * scale:
                return True, "numerically within rel_tol"
            if abs(value - gold) <= sympy.Rational(1, 10**12) * scale:
                certainly_different = False
    if certainly_different:
        return False, "numerically different"
    for gold in candidates:
        if verify(gold, exprs, timeout_seconds=None):
            return True, "math-verify: equivalent"
    return False, "math-verify: not equivalent"


def _exit_when_orphaned(parent_pid: int) -> None:
    # If the trainer dies (even by SIGKILL) the worker must not linger.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def main(argv: list[str]) -> None:
    read_fd, write_fd, memory_mb, parent_pid = (int(a) for a in argv[:4])
    inbox = Connection(read_fd, writable=False)
    outbox = Connection(write_fd, readable=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the trainer; it kills us
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    try:
        logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" notices
        check(*WARM_UP)  # imports sympy/latex2sympy and fills their caches: the pool is warm
        if memory_mb > 0:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which logs it
        outbox.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe or died
        if message is None:
            return
        job_id, answer, golds, rel_tol = message
        try:
            correct, detail = check(answer, golds, rel_tol)
            reply = (job_id, "ok", bool(correct), detail)
        except MemoryError:
            outbox.send((job_id, "error", f"out of memory (worker limit {memory_mb} MiB)"))
            os._exit(0)  # start afresh rather than trust a heap that just ran out
        except BaseException as e:  # noqa: BLE001 - math-verify's TimeoutException included
            reply = (job_id, "error", f"{type(e).__name__}: {str(e)[:200]}")
        outbox.send(reply)


if __name__ == "__main__":
    main(sys.argv[1:])
