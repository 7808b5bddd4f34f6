"""A small pool of math-verify worker processes with a hard wall-clock limit per answer,
and an optional deadline per ``run`` (a call's time budget: jobs not done by then are
``timeout``; a worker still busy with one finishes or is killed at its own limit, and its
late reply is dropped).

Why not math-verify's own timeout: it uses SIGALRM, which raises or does nothing outside
the main thread and cannot interrupt native code (big-integer powers), and its
TimeoutException derives from BaseException. Here an answer that runs past ``timeout_s``
gets its worker SIGKILLed and replaced; nothing can hang or raise in the caller.

How workers start: a fresh interpreter (``subprocess``, i.e. fork+exec like
multiprocessing's "spawn"; the trainer's torch threads are never forked) that runs
``_worker.py``. Unlike multiprocessing's spawn it does not re-run the trainer's
``__main__`` (which would import torch into every worker). The parent's ``sys.path`` is
passed on, so math-verify is found wherever the trainer found it. Each worker warms math-verify up before it
reports ready, caps its own address space (``memory_mb``), and exits if the trainer dies.

Each process owns its pools: under accelerate/torchrun every rank starts its own
workers. A pool inherited through fork (pid changed) is discarded, never shared.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

logger = logging.getLogger(__name__)

# The worker module is loaded from its file, not as rlvr.rewards._worker: it needs only
# math-verify, never the rlvr package (whose __init__ may one day import torch).
_WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
_BOOT = (
    "import sys, json, importlib.util as u; sys.path[:] = json.loads(sys.argv[5]); "
    "s = u.spec_from_file_location('_rlvr_verifier_worker', sys.argv[6]); m = u.module_from_spec(s); "
    "s.loader.exec_module(m); m.main(sys.argv[1:5])"
)
_LIVE_POOLS: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


@dataclass(frozen=True)
class Job:
    answer: str  # normalised answer text, without a percent sign
    # candidate gold values as (numerator, denominator, exact, decimal): see numbers.Num
    golds: tuple[tuple[int, int, bool, bool], ...]
    rel_tol: float
    float_rounding: int = 6


@dataclass(frozen=True)
class JobResult:
    outcome: str  # "correct" | "wrong" | "timeout" | "error"
    detail: str


class _Worker:
    def __init__(self, memory_mb: int, startup_timeout_s: float):
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(child_read), str(child_write), str(memory_mb),
                 str(os.getpid()), json.dumps(sys.path), _WORKER_FILE],
                pass_fds=(child_read, child_write),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            for fd in (parent_read, child_write, child_read, parent_write):
                os.close(fd)
            raise
        os.close(child_read)
        os.close(child_write)
        self.inbox = Connection(parent_read, writable=False)
        self.outbox = Connection(parent_write, readable=False)
        self.ready = False
        self.job: int | None = None
        # A job left running when a call's time budget ran out: its reply is dropped when it
        # comes (or the worker is killed at its deadline); the worker takes no work till then.
        self.stale: int | None = None
        self.deadline = time.monotonic() + startup_timeout_s  # startup, then per job

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - already gone
            pass
        for conn in (self.inbox, self.outbox):
            try:
                conn.close()
            except OSError:
                pass


class WorkerPool:
    """Runs math-verify jobs on ``num_workers`` processes; never raises, never hangs.

    ``run`` is thread-safe (calls are serialised). Workers start lazily on the first
    ``run`` (or ``start()``), are replaced when they time out or die, and are stopped by
    ``close()`` and at interpreter exit. A closed pool restarts on the next ``run``.
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 2048,
                 startup_timeout_s: float = 120.0):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self.startup_timeout_s = startup_timeout_s
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._pid = os.getpid()
        self._failed_starts = 0
        self._broken: str | None = None  # set when workers cannot start at all
        self._run_id = 0
        self.restarts = 0  # workers replaced after a timeout or crash (for tests/metrics)
        _LIVE_POOLS.add(self)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers now (non-blocking); they warm up in the background."""
        with self._lock:
            self._adopt_after_fork()
            self._fill()

    def close(self) -> None:
        """Stop all workers. Safe to call twice; a later ``run`` starts fresh ones."""
        with self._lock:
            if os.getpid() != self._pid:
                self._workers = []  # inherited through fork: the parent's, not ours to kill
                return
            for w in self._workers:
                w.kill()
            self._workers = []
            self._broken = None  # a later run tries again from scratch
            self._failed_starts = 0

    def _adopt_after_fork(self) -> None:
        if os.getpid() != self._pid:
            self._workers = []
            self._pid = os.getpid()

    def _fill(self) -> None:
        while len(self._workers) < self.num_workers and self._broken is None:
            try:
                self._workers.append(_Worker(self.memory_mb, self.startup_timeout_s))
            except Exception as e:  # noqa: BLE001 - e.g. out of file descriptors
                self._broken = f"cannot start a verifier worker: {type(e).__name__}: {e}"
                logger.error("%s; non-numeric answers will score 0 with outcome 'error'", self._broken)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self.restarts += 1
        self._fill()

    # -- the work ----------------------------------------------------------------------
    def run(self, jobs: list[Job], deadline: float | None = None) -> list[JobResult]:
        """Verify each job; one JobResult per job, in order. At ``deadline`` (a
        ``time.monotonic()`` value) the jobs not finished are ``timeout`` with detail
        "budget"; a worker still busy with one is left to finish (its reply is dropped)."""
        if not jobs:
            return []
        with self._lock:
            self._adopt_after_fork()
            return self._run(jobs, deadline)

    def wait_ready(self, timeout_s: float = 120.0) -> bool:
        """Start the workers if needed and block until all are warm; False if they are not."""
        with self._lock:
            self._adopt_after_fork()
            self._fill()
            end = time.monotonic() + timeout_s
            while self._broken is None and not all(w.ready for w in self._workers):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._pump([], max_wait=left)
            return self._broken is None

    def _run(self, jobs: list[Job], deadline: float | None) -> list[JobResult]:
        self._run_id += 1
        base = self._run_id * 1_000_000_000  # job ids never repeat across runs
        results: list[JobResult | None] = [None] * len(jobs)
        queue = collections.deque(range(len(jobs)))
        for w in list(self._workers):  # died while idle (OOM killer, ...)
            if w.proc.poll() is not None:
                self._replace(w)
        self._fill()
        while True:
            if self._broken is not None:
                for j in list(queue) + [w.job - base for w in self._workers if w.job is not None]:
                    results[j] = JobResult("error", self._broken)
                self._detach_all()
                return [r for r in results]  # type: ignore[misc]
            if deadline is not None and time.monotonic() >= deadline:
                for j in list(queue) + [w.job - base for w in self._workers if w.job is not None]:
                    results[j] = JobResult("timeout", "budget")
                self._detach_all()
                return [r for r in results]  # type: ignore[misc]
            self._dispatch(jobs, queue, base)
            if not queue and all(w.job is None for w in self._workers):
                return [r for r in results]  # type: ignore[misc]
            self._pump(results, max_wait=None if deadline is None else max(0.0, deadline - time.monotonic()), base=base)

    def _detach_all(self) -> None:
        for w in self._workers:
            if w.job is not None:
                w.stale, w.job = w.job, None

    def _pump(self, results: list[JobResult | None], max_wait: float | None = None, base: int = 0) -> None:
        """Wait for messages or the nearest deadline, handle them, enforce deadlines."""
        waiting = [w for w in self._workers if w.job is not None or w.stale is not None or not w.ready]
        if not waiting:  # work left but no worker at all: cannot happen unless broken
            self._broken = self._broken or "no verifier worker is running"
            return
        timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
        if max_wait is not None:
            timeout = min(timeout, max_wait)
        by_conn = {w.inbox: w for w in waiting}
        for conn in wait(list(by_conn), timeout):
            self._receive(by_conn[conn], results, base)  # type: ignore[index]
        now = time.monotonic()
        for w in list(self._workers):
            if now < w.deadline or (w.job is None and w.stale is None and w.ready):
                continue
            if w.job is not None:
                results[w.job - base] = JobResult("timeout", f"math-verify ran past {self.timeout_s:g}s; worker killed")
            elif w.stale is not None:
                pass  # a job from a call whose budget ran out: nobody waits for it
            else:
                self._failed_start(f"a verifier worker did not start within {self.startup_timeout_s:g}s")
            self._replace(w)

    def _dispatch(self, jobs: list[Job], queue: collections.deque, base: int) -> None:
        for w in self._workers:
            if not queue:
                return
            if w.ready and w.job is None and w.stale is None:
                j = queue.popleft()
                try:
                    w.outbox.send((base + j, jobs[j].answer, list(jobs[j].golds), jobs[j].rel_tol, jobs[j].float_rounding))
                except (OSError, ValueError):
                    queue.appendleft(j)  # never reached the worker: retry elsewhere
                    self._replace(w)
                    return
                w.job = base + j
                w.deadline = time.monotonic() + self.timeout_s

    def _receive(self, w: _Worker, results: list[JobResult | None], base: int = 0) -> None:
        try:
            message = w.inbox.recv()
        except (EOFError, OSError):
            code = w.proc.poll()
            if w.job is not None:
                results[w.job - base] = JobResult("error", f"verifier worker died (exit code {code}) on this answer")
            elif not w.ready:
                self._failed_start(f"a verifier worker exited during start-up (exit code {code})")
            self._replace(w)
            return
        if message[0] == "ready":
            w.ready = True
            self._failed_starts = 0
        elif message[0] == "fatal":
            self._broken = f"verifier worker failed to start: {message[1]}"
            logger.error("%s; non-numeric answers will score 0 with outcome 'error'", self._broken)
            w.kill()
            self._workers.remove(w)
        elif message[0] == w.stale:
            w.stale = None  # the late reply of a call that already returned: dropped
        elif message[0] == w.job:
            if message[1] == "ok":
                results[w.job - base] = JobResult("correct" if message[2] else "wrong", message[3])
            else:
                results[w.job - base] = JobResult("error", message[2])
            w.job = None

    def _failed_start(self, reason: str) -> None:
        self._failed_starts += 1
        if self._failed_starts >= 3:
            self._broken = reason
            logger.error("%s (3 attempts); non-numeric answers will score 0 with outcome 'error'", reason)


@atexit.register
def _close_all_pools() -> None:
    for pool in list(_LIVE_POOLS):
        try:
            pool.close()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
