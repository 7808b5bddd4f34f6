"""The math-verify worker process (slow path). Started by ``pool.WorkerPool``; never imported
by the training process itself, which therefore never imports sympy.

Protocol over two pipes (multiprocessing.connection framing, pickled tuples):

    parent -> worker: (job_id, answer_text, [(numerator, denominator, exact, decimal), ...], rel_tol,
                       float_rounding) | None
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
from fractions import Fraction
from multiprocessing.connection import Connection

WARM_UP = ("\\frac{\\sqrt{2}}{2}", [(7071, 10000, True, True)], 0.0, 6)


def _numeric_value(expr):
    """expr evaluated to 50 significant digits, or None if it is not a finite real number
    (a set, an equation, a symbol) or sympy cannot guarantee the precision."""
    import sympy

    try:
        value = expr.evalf(50, strict=True)
    except Exception:  # noqa: BLE001 - PrecisionExhausted, unevaluable objects
        return None
    if isinstance(value, (sympy.Float, sympy.Rational)) and value.is_finite:
        return value
    return None


def _rounded(x, places: int) -> Fraction:
    """x (a sympy number) rounded to ``places`` decimals, ties to even, as an exact Fraction."""
    q = Fraction(str(x)) if not hasattr(x, "p") else Fraction(int(x.p), int(x.q))
    scale = 10**places
    n, rem = divmod(q * scale, 1)
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
        n += 1
    return Fraction(int(n), scale)


def check(answer: str, golds: list[tuple[int, int, bool, bool]], rel_tol: float, float_rounding: int = 6) -> tuple[bool, str]:
    """Is the LaTeX/plain-text expression ``answer`` equal to any of the gold numbers?

    The README's equality rule: when the answer has a decimal number in it or the gold was
    written as a decimal, both are rounded to ``float_rounding`` places and compared; an
    irrational (inexact) gold is equal to an expression that agrees with it to 40 significant
    digits; an exact gold needs math-verify's exact/symbolic match. ``rel_tol`` > 0 loosens.

    Shortcut (same verdicts, ~10x faster for wrong answers): an expression without floats
    whose 50-digit value differs from every gold by more than 1e-12 relative cannot be
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
    identical = sympy.Rational(1, 10**40)
    certainly_different = True
    for expr in exprs:
        value = _numeric_value(expr)
        has_float = bool(expr.atoms(sympy.Float))
        if value is None or has_float:
            certainly_different = False
        if value is None:
            continue
        for p, q, exact, decimal in golds:
            gold = sympy.Rational(p, q)
            scale = max(abs(value), abs(gold), 1)
            if (has_float or decimal) and _rounded(value, float_rounding) == _rounded(gold, float_rounding):
                return True, f"equal after rounding to {float_rounding} decimal places"
            if not exact and not has_float and not decimal and abs(value - gold) <= identical * scale:
                return True, "numerically identical to 40 digits"
            if tol > 0 and abs(value - gold) <= tol * max(abs(value), abs(gold)):
                return True, "numerically within rel_tol"
            if exact and abs(value - gold) <= sympy.Rational(1, 10**12) * scale:
                certainly_different = False
    if certainly_different:
        return False, "numerically different"
    for p, q, exact, decimal in golds:
        if exact and verify(sympy.Rational(p, q), exprs, float_rounding=float_rounding, timeout_seconds=None):
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
        job_id, answer, golds, rel_tol, float_rounding = message
        try:
            correct, detail = check(answer, golds, rel_tol, float_rounding)
            reply = (job_id, "ok", bool(correct), detail)
        except MemoryError:
            outbox.send((job_id, "error", f"out of memory (worker limit {memory_mb} MiB)"))
            os._exit(0)  # start afresh rather than trust a heap that just ran out
        except BaseException as e:  # noqa: BLE001 - math-verify's TimeoutException included
            reply = (job_id, "error", f"{type(e).__name__}: {str(e)[:200]}")
        outbox.send(reply)


if __name__ == "__main__":
    main(sys.argv[1:])
