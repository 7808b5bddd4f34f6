"""pass@k and maj@k against hand-computed values; evaluation summaries; reading a run's metrics."""

import json
import math

import pytest

from rlvr.metrics import (
    ProgressPostfix,
    PromptRecord,
    best_eval,
    majority_correct,
    pass_at_k,
    pass_ks,
    read_metrics,
    run_summary,
    summarize,
    vote_key,
)


# n = 5 samples, c = 2 correct. pass@k = 1 - C(3, k) / C(5, k):
#   k=1: 1 - 3/5  = 0.4
#   k=2: 1 - 3/10 = 0.7
#   k=3: 1 - 1/10 = 0.9
#   k=4: 1 - 0/5  = 1.0   (C(3, 4) = 0: any 4 of 5 include a correct one)
#   k=5: 1 - 0/1  = 1.0
@pytest.mark.parametrize("k, expected", [(1, 0.4), (2, 0.7), (3, 0.9), (4, 1.0), (5, 1.0)])
def test_pass_at_k_n5_c2_by_hand(k, expected):
    assert pass_at_k(5, 2, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(8, 0, 1) == 0.0 and pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(8, 8, 1) == 1.0
    assert pass_at_k(1, 1, 1) == 1.0
    # pass@1 is the plain accuracy c/n for any n
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16)
    # pass@k by brute force over all k-subsets, n = 6, c = 2, k = 3
    from itertools import combinations

    samples = [1, 1, 0, 0, 0, 0]
    subsets = list(combinations(samples, 3))
    assert pass_at_k(6, 2, 3) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    for n, c, k in [(5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_pass_ks():
    assert pass_ks(1) == [1]
    assert pass_ks(8) == [1, 2, 4, 8]
    assert pass_ks(5) == [1, 2, 4, 5]


def test_vote_key_merges_equal_numbers():
    assert vote_key("3") == vote_key("3.0") == vote_key("6/2") == vote_key("\\frac{6}{2}")
    assert vote_key("3") != vote_key("4")
    assert vote_key("50%") != vote_key("50")
    assert vote_key(None) is None
    assert vote_key("x + 1") == vote_key("x + 1") and vote_key("x + 1")[0] == "text"


def test_majority_clear_winner_and_ties():
    # 3 votes for 7 (correct), 2 for 5: majority correct
    assert majority_correct(["7", "7", "7", "5", "5"], [1, 1, 1, 0, 0]) == 1.0
    # 2 votes for 5 (wrong) beat 1 for 7
    assert majority_correct(["7", "5", "5"], [1, 0, 0]) == 0.0
    # a tie of two answers, one right: half credit, whatever the order
    assert majority_correct(["7", "5", "7", "5"], [1, 0, 1, 0]) == 0.5
    assert majority_correct(["5", "7", "5", "7"], [0, 1, 0, 1]) == 0.5
    # a three-way tie with one right answer: one third
    assert majority_correct(["1", "2", "3"], [0, 1, 0]) == pytest.approx(1 / 3)
    # no answer does not vote: 1 vote for the right answer beats 3 empty ones
    assert majority_correct([None, None, None, "7"], [0, 0, 0, 1]) == 1.0
    assert majority_correct([None, None], [0, 0]) == 0.0
    # with vote keys: "3", "3.0" and "6/2" are one answer of three votes against two "5"
    keys = [vote_key(a) for a in ["3", "5", "3.0", "5", "6/2"]]
    assert majority_correct(keys, [1, 0, 1, 0, 1]) == 1.0
    with pytest.raises(ValueError):
        majority_correct(["1"], [1, 0])


def _record(pid, rewards, votes, source="a", greedy=None):
    return PromptRecord(id=pid, source=source, rewards=rewards, votes=votes, lengths=[10] * len(rewards),
                        truncated=[False] * (len(rewards) - 1) + [True], outcomes=["correct" if r else "wrong" for r in rewards],
                        greedy_reward=greedy)


def test_summarize_overall_and_per_source():
    records = [
        _record("p1", [1, 1, 0, 0], ["1", "1", "2", "3"], "a", greedy=1.0),  # c=2: pass@2 = 1 - C(2,2)/C(4,2) = 5/6
        _record("p2", [0, 0, 0, 0], ["2", "2", "3", None], "b", greedy=0.0),  # c=0
    ]
    m = summarize(records)
    assert m["eval/pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["eval/pass@2"] == pytest.approx((5 / 6 + 0) / 2)
    assert m["eval/pass@4"] == pytest.approx((1 + 0) / 2)
    assert m["eval/maj@4"] == pytest.approx((1 + 0) / 2)
    assert m["eval/greedy"] == 0.5
    assert m["eval/response_length/mean"] == 10
    assert m["eval/response_length/truncated"] == pytest.approx(2 / 8)
    assert m["eval/outcome/correct"] == pytest.approx(2 / 8) and m["eval/outcome/wrong"] == pytest.approx(6 / 8)
    assert m["eval/num_prompts"] == 2
    assert m["eval/by_source/a/pass@1"] == 0.5 and m["eval/by_source/b/pass@1"] == 0.0
    assert m["eval/by_source/a/num_prompts"] == 1
    # one source: no per-source duplicates
    assert not any("by_source" in k for k in summarize(records[:1]))
    assert summarize([]) == {}


def test_read_metrics_nan_strings_and_torn_last_line(tmp_path):
    rows = [{"step": 1, "reward/mean": 0.1, "loss": "nan"}, {"step": 2, "reward/mean": 0.3, "eval/pass@1": 0.25}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "rew'
    (tmp_path / "metrics.jsonl").write_text(text)
    got = read_metrics(str(tmp_path))
    assert [r["step"] for r in got] == [1, 2]
    assert math.isnan(got[0]["loss"])
    assert read_metrics(str(tmp_path / "nowhere")) == []
    assert best_eval(got) == (2, 0.25)


def test_progress_postfix_carries_the_last_eval():
    postfix = ProgressPostfix()
    first = postfix({"step": 1, "reward/mean": 0.5, "time/step_s": 2.0})
    assert first == {"reward": "0.500", "s/step": "2.0"}
    postfix({"step": 2, "reward/mean": 0.5, "time/step_s": 2.0, "eval/pass@1": 0.25})
    third = postfix({"step": 3, "reward/mean": 0.75, "time/step_s": 2.0})
    assert third["eval"] == "0.250"


def test_run_summary_names_best_eval_and_places(tmp_path):
    rows = [{"step": s, "reward/mean": s / 10, "time/step_s": 30.0} for s in range(1, 11)]
    rows[4]["eval/pass@1"] = 0.6
    rows[9]["eval/pass@1"] = 0.5
    rows[9]["eval/greedy"] = 0.7
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "final").mkdir()
    (tmp_path / "plots").mkdir()
    text = run_summary(str(tmp_path))
    assert "Finished 10 steps in 5.0 min" in text
    assert "Best eval pass@1 0.600 at step 5" in text and "(step 10) pass@1 0.500, greedy 0.700" in text
    assert str(tmp_path / "final") in text and str(tmp_path / "plots") in text
    assert "No steps" in run_summary(str(tmp_path / "empty"))


def test_an_sft_run_reports_its_nll_not_a_reward(tmp_path):
    assert ProgressPostfix()({"sft/nll": 1.23456, "time/step_s": 2.0}) == {"nll": "1.235", "s/step": "2.0"}
    rows = [{"step": 1, "sft/nll": 4.5, "time/step_s": 1.0}, {"step": 2, "sft/nll": 0.25, "time/step_s": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = run_summary(str(tmp_path))
    assert "Training NLL went from 4.500 (step 1) to 0.250 (step 2)." in text and "reward" not in text
