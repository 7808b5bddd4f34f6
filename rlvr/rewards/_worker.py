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


def check(answer: str, golds: list[tuple[int, int]], rel_tol: float) -> tuple[bool, str]:
    """Is the LaTeX/plain-text expression ``answer`` equal to any of the gold numbers?

    Correct when math-verify's ``verify`` says so (exact/symbolic, with its own rounding of
    floats to 6 decimals), or, for a non-integer gold, when the expression evaluates to a
    real number within rel_tol of it. Integer golds need math-verify's exact/symbolic match.
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
    for p, q in golds:
        gold = sympy.Rational(p, q)
        if verify(gold, exprs, timeout_seconds=None):
            return True, "math-verify: equivalent"
    tol = sympy.Rational(repr(rel_tol))
    for p, q in golds:
        if q == 1:
            continue
        gold = sympy.Rational(p, q)
        for expr in exprs:
            value = expr.evalf(30)
            if not (value.is_number and value.is_real and value.is_finite):
                continue
            if abs(value - gold) <= tol * max(abs(value), abs(gold)):
                return True, "numerically within rel_tol"
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
