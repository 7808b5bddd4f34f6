"""The verifier never hangs, never raises, and behaves the same from threads and processes.

Uses a small per-answer timeout (1.5 s) so the hanging cases stay cheap.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from rlvr.rewards import Verifier
from rlvr.rewards import verifier as verifier_module

TIMEOUT = 1.5
# Slow-path inputs that hang plain math-verify (sympy expands the product; checked: >30 s).
# They are not "too large": no exponent above 10,000, so they do reach the worker.
HANGS_MATH_VERIFY = ["\\boxed{\\prod_{k=1}^{9999} (k+\\sqrt{2})}", "\\boxed{\\prod_{k=1}^{9999} (k+\\sqrt{3})}"]
NORMAL = [  # (completion, gold, reward): fast and slow path, both directions
    ("There are 7 red cubes. \\boxed{7}", "7", 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{50\\%}", "0.5", 1.0),
    ("\\boxed{8}", "7", 0.0),
    ("\\boxed{\\sqrt{2}}", "1.41421356", 1.0),
    ("\\boxed{2\\pi}", "6.28", 0.0),
    ("\\boxed{\\sqrt{9}}", "3", 1.0),
    ("no answer here, 7", "7", 0.0),
    ("\\boxed{2\\cos(0)}", "2", 1.0),  # math-verify (slow path)
    ("\\boxed{\\sin(\\pi/6)}", "0.6", 0.0),
]


def _wait_ready(verifier):
    """Block until every worker is warm, so timings below measure verification only."""
    assert verifier.warm_up(wait=True, timeout_s=120)


@pytest.fixture(scope="module")
def verifier():
    v = Verifier(timeout_s=TIMEOUT, num_workers=2)
    _wait_ready(v)
    yield v
    v.close()


_fresh = iter(range(1000, 10_000))  # answers no other test uses


def _check_healthy(verifier):
    """The pool still verifies: new slow-path answers (never cached) and the NORMAL table."""
    n = next(_fresh)
    # trig is read by math-verify only (closed forms such as \sqrt are decided on the fast path)
    fresh = verifier.verify_batch([f"\\boxed{{{n}\\cos(0)}}", f"\\boxed{{{n + 1}\\cos(0)}}"], [str(n), str(n)])
    assert [(r.reward, r.cached, r.fast_path) for r in fresh] == [(1.0, False, False), (0.0, False, False)]
    results = verifier.verify_batch([c for c, _, _ in NORMAL], [g for _, g, _ in NORMAL])
    assert [r.reward for r in results] == [r for _, _, r in NORMAL]


def test_pool_starts_lazily_and_only_for_the_slow_path():
    v = Verifier()
    try:
        assert v.pool._workers == []
        v.verify_batch(["\\boxed{7}", "\\boxed{1/2}", "nothing", "\\boxed{seven}"], ["7", "0.5", "1", "7"])
        assert v.pool._workers == []  # the fast path never starts a process
    finally:
        v.close()


PATHOLOGICAL = [
    ("\\boxed{\\sqrt{2}\\cdot 9^{9^{9^{9}}}}", "5"),
    ("\\boxed{5^{5^{5^{5^{5}}}}}", "5"),
    ("\\boxed{9^{9^{9^{9}}}}", "387420489"),
    ("\\boxed{1e999999999}", "1"),
    ("\\boxed{10^{10^{10^{10}}} - 1}", "9"),
    ("x" * 100_000, "7"),
    ("\\boxed{" + "9" * 100_000 + "}", "9"),
    ("lorem ipsum 12 " * 6_700 + "\\boxed{", "12"),
    ("\\boxed{" * 10_000, "1"),
    ("\\boxed{\x00}", "0"),
    ("\x00" * 1000 + "\\boxed{7\x00", "7"),
    ("\\boxed{" + "\\frac{" * 500 + "1" + "}{2}" * 500 + "}", "0"),
    ("\\boxed{" + "\\frac{" * 150 + "1" + "}{2}" * 150 + "}", "0"),
    ("\\boxed{" + "\\sqrt{" * 20 + "2" + "}" * 20 + "}", "0"),
    ("\\boxed{" + "(" * 3000 + "}", "1"),
    ("\\boxed{\\frac{1}{0}}", "1"),
    ("\\boxed{0^{-1}}", "1"),
    ("\\boxed{\\\\\\\\\\}}}}}", "1"),
]


@pytest.mark.parametrize("completion, gold", PATHOLOGICAL, ids=[f"p{i}" for i in range(len(PATHOLOGICAL))])
def test_pathological_input_scores_zero_within_the_limit(verifier, completion, gold):
    start = time.perf_counter()
    result = verifier.verify(completion, gold)
    elapsed = time.perf_counter() - start
    assert result.reward == 0.0 and result.outcome in ("wrong", "no_answer", "timeout"), result
    assert elapsed < TIMEOUT + 2.0, f"{elapsed:.2f}s for {completion[:40]!r}"  # 2 s: CI load


def test_hanging_math_verify_is_killed_and_the_pool_recovers(verifier):
    _wait_ready(verifier)
    restarts = verifier.pool.restarts
    start = time.perf_counter()
    results = verifier.verify_batch([HANGS_MATH_VERIFY[0]] + [c for c, _, _ in NORMAL], ["5"] + [g for _, g, _ in NORMAL])
    elapsed = time.perf_counter() - start
    assert (results[0].outcome, results[0].reward, results[0].fast_path) == ("timeout", 0.0, False)
    assert [r.reward for r in results[1:]] == [r for _, _, r in NORMAL]  # the same batch still verifies
    assert verifier.pool.restarts == restarts + 1
    assert TIMEOUT <= elapsed < TIMEOUT + 2.0, elapsed  # killed at the limit, not minutes later
    _check_healthy(verifier)  # the other worker carries on while the killed one is replaced


def test_timeouts_are_not_cached(verifier):
    # A timeout is not a verdict: the same answer may finish when the pool is not busy.
    first = verifier.verify(HANGS_MATH_VERIFY[0], "5")
    _wait_ready(verifier)
    restarts = verifier.pool.restarts
    again = verifier.verify(HANGS_MATH_VERIFY[0], "5")
    assert (first.outcome, again.outcome, again.cached) == ("timeout", "timeout", False)
    assert verifier.pool.restarts == restarts + 1  # really tried again


# Answers whose values are too large to compare anywhere in the expression: rejected in
# microseconds without math-verify (each used to take 4-5 s and a killed worker).
TOO_LARGE = ["\\boxed{\\sqrt{5^{5^{5^{5}}}}}", "\\boxed{x^{5^{5^{5^{5}}}}}", "\\boxed{\\log(10^{10^{10}})}",
             "\\boxed{\\sqrt{2}\\cdot 9^{9^{9^{9}}}}", "\\boxed{\\sin(10**10**10)}", "\\boxed{(10^{6})! + \\pi}"]


def test_values_too_large_never_reach_math_verify():
    v = Verifier()
    try:
        start = time.perf_counter()
        results = v.verify_batch(TOO_LARGE, ["5"] * len(TOO_LARGE))
        assert time.perf_counter() - start < 0.5
        assert all((r.outcome, r.fast_path) == ("wrong", True) for r in results), results
        assert all("too large" in r.detail or "factorial" in r.detail for r in results), [r.detail for r in results]
        assert v.pool._workers == []  # no worker was ever started
    finally:
        v.close()


def test_a_call_never_runs_past_its_time_budget(monkeypatch):
    v = Verifier(timeout_s=30.0, num_workers=2, batch_timeout_s=2.5)
    try:
        _wait_ready(v)
        hangs = [f"\\boxed{{\\prod_{{k=1}}^{{9999}} (k+\\sqrt{{{n}}})}}" for n in (2, 3, 5, 6)]
        batch = hangs + [c for c, _, _ in NORMAL]
        golds = ["5"] * len(hangs) + [g for _, g, _ in NORMAL]
        start = time.perf_counter()
        results = v.verify_batch(batch, golds)
        elapsed = time.perf_counter() - start
        assert 2.5 <= elapsed < 3.5, elapsed  # the budget, not 4 x 30 s
        assert [r.outcome for r in results[:4]] == ["timeout"] * 4
        assert all("budget" in r.detail for r in results[:4])
        # the fast-path answers were decided before the budget ran out; slow ones queued
        # behind the hangs may be timeouts too, but nothing is wrong that should be right
        for r, (_, _, reward) in zip(results[4:], NORMAL):
            assert r.reward == reward or (r.outcome == "timeout" and not r.fast_path)
        # the next call is not blocked by the workers still busy with the abandoned answers
        start = time.perf_counter()
        again = v.verify_batch(["\\boxed{7}", "\\boxed{3\\cos(0)}"], ["7", "3"])
        assert time.perf_counter() - start < 2.6
        assert again[0].reward == 1.0 and again[1].outcome in ("correct", "timeout")
        assert not any(r.cached for r in v.verify_batch(hangs, ["5"] * 4))  # timeouts were not cached
    finally:
        v.close()


def test_a_worker_that_dies_mid_answer_is_an_error_not_a_crash(verifier):
    _wait_ready(verifier)
    victim = verifier.pool._workers[0]  # the first idle worker gets the first job

    def kill_soon():
        time.sleep(0.4)
        os.kill(victim.proc.pid, 9)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    result = verifier.verify(HANGS_MATH_VERIFY[1], "1")
    killer.join()
    assert (result.outcome, result.reward) == ("error", 0.0) and "died" in result.detail
    _check_healthy(verifier)


class FakeTimeout(BaseException):
    """Like math-verify's TimeoutException: not an Exception."""


def test_no_exception_of_any_kind_escapes(monkeypatch, caplog):
    v = Verifier()

    def explode(jobs, deadline=None):
        raise FakeTimeout("from the pool")

    monkeypatch.setattr(v.pool, "run", explode)
    with caplog.at_level(logging.WARNING, logger="rlvr.rewards.verifier"):
        results = v.verify_batch(["\\boxed{7\\cos(0)}", "\\boxed{7\\cos(0)}", "\\boxed{7}"], ["7", "7", "7"])
    assert [(r.outcome, r.reward) for r in results] == [("error", 0.0), ("error", 0.0), ("correct", 1.0)]
    assert "FakeTimeout" in results[0].detail
    assert sum("FakeTimeout" in rec.getMessage() for rec in caplog.records) == 1  # logged once

    def broken_extract(text, policy):
        raise RecursionError("deep")

    monkeypatch.setattr(verifier_module, "extract_answer", broken_extract)
    result = v.verify("\\boxed{7}", "7")
    assert (result.outcome, result.reward) == ("error", 0.0)
    assert v.verify(None, "7").outcome == "error"  # type: ignore[arg-type]


def test_failures_are_logged_with_the_input_truncated(caplog):
    with caplog.at_level(logging.WARNING, logger="rlvr.rewards.verifier"):
        Verifier().verify("\\boxed{7}", "not a number " + "z" * 5000)
    messages = [rec.getMessage() for rec in caplog.records]
    assert len(messages) == 1 and len(messages[0]) < 600 and "[5013 chars]" in messages[0]


def test_contract_errors_still_raise():
    with pytest.raises(ValueError, match="2 completions but 1 golds"):
        Verifier().verify_batch(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="answer_extraction"):
        Verifier(answer_extraction="first")
    with pytest.raises(ValueError, match="rel_tol"):
        Verifier(rel_tol=float("nan"))
    with pytest.raises(ValueError, match="batch_timeout_s"):
        Verifier(batch_timeout_s=-1)
    with pytest.raises(ValueError, match="float_rounding"):
        Verifier(float_rounding=2.5)  # type: ignore[arg-type]


def test_non_main_threads_give_the_same_results(verifier, monkeypatch):
    completions, golds = [c for c, _, _ in NORMAL], [g for _, g, _ in NORMAL]
    monkeypatch.setattr(verifier, "_cache", verifier_module._LRU(0))  # the threads really verify
    expected = [(r.reward, r.outcome) for r in verifier.verify_batch(completions, golds)]
    outputs = {}

    def work(name):
        outputs[name] = [(r.reward, r.outcome) for r in verifier.verify_batch(completions, golds)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert outputs == {n: expected for n in range(4)}


CHILD = textwrap.dedent(
    """
    import json, sys
    from rlvr.rewards import RewardComposer, Verifier
    verifier = Verifier(num_workers=1)  # as the trainer makes its own from its config
    composer = RewardComposer([("rlvr.rewards:numeric_reward", 1.0)], verifier)
    cases = json.loads(sys.argv[1])
    rewards, _ = composer([c for c, _ in cases], [g for _, g in cases])
    pids = [w.proc.pid for w in verifier.pool._workers]
    print(json.dumps({"rewards": rewards, "workers": pids}))
    """
)


def test_two_processes_at_once_give_the_same_results_and_clean_up():
    cases = [(c, g) for c, g, _ in NORMAL]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cases)], stdout=subprocess.PIPE, env=env)
             for _ in range(2)]
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for out in outputs:
        assert out["rewards"] == [r for _, _, r in NORMAL]
        assert len(out["workers"]) == 1  # each process owns its own pool
    assert not set(outputs[0]["workers"]) & set(outputs[1]["workers"])
    time.sleep(0.2)
    for pid in outputs[0]["workers"] + outputs[1]["workers"]:  # stopped at exit (atexit)
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_repeated_pairs_are_verified_once(verifier, monkeypatch):
    v = verifier
    sent = []
    real_run = v.pool.run
    monkeypatch.setattr(v.pool, "run", lambda jobs, deadline=None: sent.extend(jobs) or real_run(jobs, deadline))
    batch = ["\\boxed{3\\cos(0)}"] * 8 + ["\\boxed{ 3\\cos(0) }"] * 4  # normalised to the same answer
    first = v.verify_batch(batch, ["3"] * 12)
    second = v.verify_batch(batch, ["3"] * 12)
    assert len(sent) == 1
    assert all(r.reward == 1.0 for r in first + second)
    assert not any(r.cached for r in first) and all(r.cached for r in second)


def test_cache_is_bounded_and_can_be_disabled():
    v = Verifier(cache_size=3)
    v.verify_batch([f"\\boxed{{{i}}}" for i in range(10)], ["1"] * 10)
    assert len(v._cache) == 3
    off = Verifier(cache_size=0)
    off.verify_batch(["\\boxed{1}"] * 2, ["1"] * 2)
    assert not off.verify("\\boxed{1}", "1").cached and len(off._cache) == 0


def test_close_stops_workers_and_the_verifier_restarts_lazily(verifier):
    procs = [w.proc for w in verifier.pool._workers]
    verifier.close()
    assert all(p.poll() is not None for p in procs) and verifier.pool._workers == []
    assert verifier.verify("\\boxed{5\\cos(0)}", "5").reward == 1.0  # starts again
    assert len(verifier.pool._workers) == 2
