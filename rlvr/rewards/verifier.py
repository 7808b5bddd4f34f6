"""The numeric verifier: extraction, exact fast path, isolated math-verify slow path, cache.

    completion --extract--> raw answer --normalise--> text (+ percent flag, or a verdict
                                                       from its form: hedge, relation)
        -> cache hit?                     -> cached verdict
        -> plain number or closed form?   -> exact comparison / 6-decimal rounding (fast path)
        -> words / too long / too large   -> wrong without math-verify            (fast path)
        -> otherwise                      -> math-verify in a worker process      (slow path)

A call has a wall-time budget (``batch_timeout_s``): what is not verified by then scores
``timeout``. Timeouts are never cached (the same answer may finish when the pool is idle).

Semantics are written up in the project README ("The numeric verifier"). Contract errors (lists of different
lengths, an unknown extraction policy) raise; nothing that happens while verifying does:
every failure becomes reward 0 with outcome ``error`` (or ``timeout``), logged once.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

from rlvr.rewards.expression import parse_number, value_too_large
from rlvr.rewards.extract import EXTRACTION_POLICIES, extract_answer
from rlvr.rewards.gold import Gold, GoldParseError, parse_gold
from rlvr.rewards.normalize import NormalizedAnswer, has_stray_words, normalize_answer
from rlvr.rewards.numbers import (
    MAX_DEPTH,
    AnswerRejected,
    NotPlainNumber,
    Num,
    gold_candidates,
    numbers_equal,
)
from rlvr.rewards.pool import Job, WorkerPool

logger = logging.getLogger(__name__)

OUTCOMES = ("correct", "wrong", "no_answer", "timeout", "error")
MAX_ANSWER_CHARS = 2000  # a longer extracted answer is scored wrong, not parsed
_SHOWN_CHARS = 1000  # VerifyResult.extracted keeps at most this much of the answer
_LOG_CHARS = 200
_MAX_LOG_LINES = 100
_SEVERAL_NUMBERS_RE = re.compile(r"\d\s+\d")
_BAD_GROUPING_RE = re.compile(r"\d,\d")


@dataclass(frozen=True)
class VerifyResult:
    """The verdict on one completion.

    reward:    1.0 if correct else 0.0.
    outcome:   one of OUTCOMES.
    extracted: the raw final answer found in the completion (truncated), None if none.
    has_boxed: the completion contains \\boxed or \\fbox.
    fast_path: decided without math-verify (also true for cache hits of such verdicts).
    cached:    the verdict came from the cache.
    detail:    why, in a few words (for the scored output and debugging).
    """

    reward: float
    outcome: str
    extracted: str | None
    has_boxed: bool
    fast_path: bool
    cached: bool = False
    detail: str = ""


@dataclass(frozen=True)
class _Verdict:
    outcome: str
    fast_path: bool
    detail: str


class _LRU:
    """A thread-safe bounded LRU map; size 0 disables it."""

    def __init__(self, size: int):
        self.size = size
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        if self.size <= 0:
            return None
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


_logged: set[tuple[str, str, str]] = set()
_logged_lock = threading.Lock()


def _log_once(outcome: str, detail: str, text: str) -> None:
    """Log a timeout/error once per distinct (failure, input), input truncated; at most
    100 lines per process, so a run that keeps failing cannot flood the log."""
    shown = text if len(text) <= _LOG_CHARS else text[:_LOG_CHARS] + f"... [{len(text)} chars]"
    with _logged_lock:
        key = (outcome, detail[:_LOG_CHARS], shown)
        if key in _logged or len(_logged) > _MAX_LOG_LINES:
            return
        _logged.add(key)
        last = len(_logged) > _MAX_LOG_LINES
    logger.warning("verifier %s (reward 0): %s; input %r", outcome, detail, shown)
    if last:
        logger.warning("verifier: %d distinct failures logged; further ones are not", _MAX_LOG_LINES)


def _nesting_depth(s: str) -> int:
    depth = deepest = 0
    for c in s:
        if c in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "})]":
            depth -= 1
    return deepest


class Verifier:
    """Scores completions against number golds. See the README, "The numeric verifier".

    Args:
        answer_extraction: "boxed" (last \\boxed/\\fbox, else a final-answer statement, else a
            completion that is only an answer) or "last_number" (the last number anywhere).
        rel_tol: extra relative tolerance on top of the equality rule (0 = none, the default).
        timeout_s: wall-clock limit per answer in math-verify; the worker is then killed.
        num_workers: math-verify worker processes (started lazily, per process/rank).
        cache_size: LRU entries of (answer, gold) verdicts; 0 disables the cache.
        worker_memory_mb: address-space limit of each worker.
        batch_timeout_s: wall-clock budget of one ``verify_batch`` call; answers not verified
            by then score ``timeout`` (None or 0: no budget).
        float_rounding: decimal places both sides are rounded to when either is a decimal.
    """

    def __init__(self, answer_extraction: str = "boxed", rel_tol: float = 0.0, timeout_s: float = 5.0,
                 num_workers: int = 2, cache_size: int = 100_000, worker_memory_mb: int = 2048,
                 batch_timeout_s: float | None = 20.0, float_rounding: int = 6):
        if answer_extraction not in EXTRACTION_POLICIES:
            raise ValueError(f"answer_extraction must be one of {EXTRACTION_POLICIES}, got {answer_extraction!r}")
        if not (isinstance(rel_tol, (int, float)) and math.isfinite(rel_tol) and 0 <= rel_tol < 1):
            raise ValueError(f"rel_tol must be a float in [0, 1), got {rel_tol!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0 disables the cache), got {cache_size}")
        if batch_timeout_s is not None and not (isinstance(batch_timeout_s, (int, float)) and batch_timeout_s >= 0):
            raise ValueError(f"batch_timeout_s must be a number of seconds >= 0 (0 or None: no budget), got {batch_timeout_s!r}")
        if not (isinstance(float_rounding, int) and 0 <= float_rounding <= 15):
            raise ValueError(f"float_rounding must be an integer in [0, 15] (decimal places), got {float_rounding!r}")
        self.answer_extraction = answer_extraction
        self.rel_tol = float(rel_tol)
        self._tol = Fraction(repr(self.rel_tol))  # 1e-6 exactly, not its binary float
        self.timeout_s = float(timeout_s)
        self.batch_timeout_s = float(batch_timeout_s) if batch_timeout_s else None
        self.float_rounding = float_rounding
        self._pool = WorkerPool(num_workers=num_workers, timeout_s=timeout_s, memory_mb=worker_memory_mb)
        self._cache = _LRU(cache_size)
        self._golds = _LRU(max(cache_size, 1024))  # gold text -> Gold | GoldParseError

    # -- lifecycle ---------------------------------------------------------------------
    def warm_up(self, wait: bool = False, timeout_s: float = 120.0) -> bool:
        """Start the math-verify workers now (optional; otherwise the first slow-path
        answer starts them). With ``wait``, block until they are warm; returns whether
        they are (always True without ``wait``)."""
        if wait:
            return self._pool.wait_ready(timeout_s)
        self._pool.start()
        return True

    def close(self) -> None:
        """Stop the workers (they restart lazily if the verifier is used again)."""
        self._pool.close()

    def __enter__(self) -> "Verifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pool(self) -> WorkerPool:
        return self._pool

    # -- verification ------------------------------------------------------------------
    def verify(self, completion: str, gold: Gold | str) -> VerifyResult:
        return self.verify_batch([completion], [gold])[0]

    def verify_batch(self, completions: Sequence[str], golds: Sequence[Gold | str]) -> list[VerifyResult]:
        """One VerifyResult per completion. Never raises except for a length mismatch
        (and Ctrl-C, which still stops the run). Returns within ``batch_timeout_s`` (plus
        the few milliseconds one answer's fast path can take)."""
        if len(completions) != len(golds):
            raise ValueError(f"verify_batch got {len(completions)} completions but {len(golds)} golds")
        deadline = time.monotonic() + self.batch_timeout_s if self.batch_timeout_s else None
        results: list[VerifyResult | None] = [None] * len(completions)
        slow: dict[tuple, tuple[Job, list[tuple[int, str, bool]]]] = {}
        for i, (completion, gold) in enumerate(zip(completions, golds)):
            if deadline is not None and time.monotonic() > deadline:
                results[i] = VerifyResult(0.0, "timeout", None, False, True, detail=self._budget_detail())
                continue
            try:
                item = self._first_pass(completion, gold)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 - nothing escapes into training
                results[i] = self._failure("error", f"{type(e).__name__}: {e}", completion, None, False)
                continue
            if isinstance(item, VerifyResult):
                results[i] = item
            else:
                key, job, shown, has_boxed = item
                slow.setdefault(key, (job, []))[1].append((i, shown, has_boxed))
        if slow:
            self._slow_pass(slow, results, deadline)
        return results  # type: ignore[return-value]

    def _budget_detail(self) -> str:
        return f"the call's time budget (batch_timeout_s={self.batch_timeout_s:g}) ran out before this answer"

    def _first_pass(self, completion: Any, gold: Gold | str):
        """A VerifyResult, or (cache key, Job, shown answer, has_boxed) for the slow path."""
        if not isinstance(completion, str):
            return self._failure("error", f"completion is {type(completion).__name__}, not str", repr(completion), None, False)
        extraction = extract_answer(completion, self.answer_extraction)
        has_boxed = extraction.has_boxed
        raw = extraction.answer
        shown = None if raw is None else raw if len(raw) <= _SHOWN_CHARS else raw[:_SHOWN_CHARS] + "..."
        gold_obj = self._gold(gold)
        if isinstance(gold_obj, str):  # checked first: a bad gold is the dataset's bug
            return self._failure("error", gold_obj, str(gold), shown, has_boxed)
        if raw is None:
            return VerifyResult(0.0, "no_answer", None, has_boxed, True, detail=extraction.detail or "no final answer found")
        if len(raw) > MAX_ANSWER_CHARS:
            return VerifyResult(0.0, "wrong", shown, has_boxed, True, detail=f"answer longer than {MAX_ANSWER_CHARS} characters")
        # A box or a statement may hold words around its one number; a bare completion may not.
        answer = normalize_answer(raw, words=extraction.source in ("box", "statement"))
        gold_num = gold_obj.num
        key = (self.answer_extraction, self.rel_tol, self.float_rounding, answer.key(), answer.verdict,
               gold_num, gold_obj.percent)
        verdict = self._cache.get(key)
        if verdict is not None:
            return self._result(verdict, shown, has_boxed, cached=True)
        verdict = self._fast(answer, gold_obj)
        if verdict is not None:
            self._cache.put(key, verdict)
            return self._result(verdict, shown, has_boxed)
        candidates = gold_candidates(gold_num, gold_obj.percent, answer.percent)
        job = Job(answer.text, tuple((c.value.numerator, c.value.denominator, c.exact, c.decimal) for c in candidates),
                  self.rel_tol, self.float_rounding)
        return key, job, shown, has_boxed

    def _fast(self, answer: NormalizedAnswer, gold: Gold) -> _Verdict | None:
        """Decide without math-verify when possible; None means 'needs math-verify'."""
        if answer.verdict is not None:
            return _Verdict(answer.verdict[0], True, answer.verdict[1])
        text = answer.text
        if not text:
            return _Verdict("no_answer", True, "empty answer")
        if _nesting_depth(text) > MAX_DEPTH:
            return _Verdict("wrong", True, f"answer nested deeper than {MAX_DEPTH} levels")
        try:
            value: Num | None = parse_number(text)
        except AnswerRejected as e:
            return _Verdict("wrong", True, str(e))
        except NotPlainNumber:
            value = None
        if value is not None:
            candidates = gold_candidates(gold.num, gold.percent, answer.percent)
            if any(numbers_equal(value, c, self.float_rounding, self._tol) for c in candidates):
                return _Verdict("correct", True, "equal (exact, or both rounded to "
                                f"{self.float_rounding} decimal places)")
            return _Verdict("wrong", True, "not equal")
        if has_stray_words(text):
            return _Verdict("wrong", True, "answer contains words, not a number")
        if not any(c.isdigit() or c == "\\" or not c.isascii() for c in text):
            return _Verdict("wrong", True, "answer contains no number")
        if _SEVERAL_NUMBERS_RE.search(text):
            return _Verdict("wrong", True, "answer contains several numbers")
        if _BAD_GROUPING_RE.search(text):
            return _Verdict("wrong", True, "malformed thousands grouping or a decimal comma")
        too_large = value_too_large(text)
        if too_large is not None:
            return _Verdict("wrong", True, f"value too large to compare: {too_large}")
        try:  # a closed form read like the golds: \sqrt{3}, 3\sqrt{13}, \frac{\pi}{4}, 2+3
            value = parse_number(text, closed_form=True)
        except AnswerRejected as e:
            return _Verdict("wrong", True, str(e))
        except (NotPlainNumber, ArithmeticError, ValueError):
            return None  # anything else (trig, logs, sums, sets...): math-verify
        if any(numbers_equal(value, c, self.float_rounding, self._tol)
               for c in gold_candidates(gold.num, gold.percent, answer.percent)):
            return _Verdict("correct", True, "equal closed form (numerically, 40 digits; or rounded when a side is a decimal)")
        return _Verdict("wrong", True, "not equal (closed form evaluated numerically)")

    def _slow_pass(self, slow: dict, results: list[VerifyResult | None], deadline: float | None) -> None:
        keys = list(slow)
        try:
            outcomes = self._pool.run([slow[k][0] for k in keys], deadline=deadline)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - the pool should never raise; be sure
            outcomes = None
            failure = f"verifier pool failed: {type(e).__name__}: {e}"
        for n, key in enumerate(keys):
            job, items = slow[key]
            if outcomes is not None:
                detail = outcomes[n].detail if outcomes[n].detail != "budget" else self._budget_detail()
                verdict = _Verdict(outcomes[n].outcome, False, detail)
            else:
                verdict = _Verdict("error", False, failure)
            if verdict.outcome in ("timeout", "error"):
                _log_once(verdict.outcome, verdict.detail, job.answer)
            else:  # a timeout or a crash is not a verdict: the same answer may finish later
                self._cache.put(key, verdict)
            for i, shown, has_boxed in items:
                results[i] = self._result(verdict, shown, has_boxed)

    # -- helpers -----------------------------------------------------------------------
    def _gold(self, gold: Gold | str) -> Gold | str:
        """The parsed gold, or a string saying why it is unusable (such golds never reward)."""
        if isinstance(gold, Gold):
            return gold
        if not isinstance(gold, str):
            return f"gold is {type(gold).__name__}, not str or Gold"
        parsed = self._golds.get(gold)
        if parsed is None:
            try:
                parsed = parse_gold(gold)
            except GoldParseError as e:
                parsed = f"unusable gold: {e}"
            self._golds.put(gold, parsed)
        return parsed

    @staticmethod
    def _result(verdict: _Verdict, shown: str | None, has_boxed: bool, cached: bool = False) -> VerifyResult:
        reward = 1.0 if verdict.outcome == "correct" else 0.0
        return VerifyResult(reward, verdict.outcome, shown, has_boxed, verdict.fast_path, cached, verdict.detail)

    @staticmethod
    def _failure(outcome: str, detail: str, text: str, shown: str | None, has_boxed: bool) -> VerifyResult:
        _log_once(outcome, detail, text)
        return VerifyResult(0.0, outcome, shown, has_boxed, True, detail=detail)
