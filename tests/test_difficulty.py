"""rlvr.difficulty: the solved rule, retiring solved prompts, and DAPO's dynamic sampling, by hand."""

import json
import os
import threading

import pytest
import torch

from rlvr.batch import Response
from rlvr.config import Config, ConfigError, TrainerConfig, check_config
from rlvr.data import DataError, EpochSampler
from rlvr.difficulty import DifficultyFilter, Group, SolvedRecord, all_correct, informative, pass_rate
from rlvr.rollout import response_seeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_all_correct_and_pass_rate():
    assert all_correct([1.0, 1.0, 1.0]) and not all_correct([1.0, 0.0, 1.0])
    assert not all_correct([])  # no response: nothing was solved
    assert all_correct(torch.tensor([0.5, 0.7]), threshold=0.5) and not all_correct([0.5, 0.4], threshold=0.5)
    assert pass_rate([1.0, 0.0, 1.0, 1.0]) == 0.75
    assert pass_rate([0.2, 0.6, 0.9], threshold=0.5) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="empty group"):
        pass_rate([])
    assert informative([0.0, 1.0]) and not informative([1.0, 1.0]) and not informative([0.0, 0.0])


def test_a_prompt_retires_after_k_all_correct_visits_in_a_row():
    record = SolvedRecord(k=2)
    assert record.visit(5, [1, 1]) is False and record.streaks == {5: 1}
    assert record.visit(5, [1, 1]) is True and record.retired == {5}
    # correct, wrong, correct: the wrong visit resets the streak, so row 7 is not retired
    assert [record.visit(7, r) for r in ([1, 1], [1, 0], [1, 1])] == [False, False, False]
    assert record.streaks == {7: 1} and record.retired == {5}
    assert record.visit(5, [1, 1]) is False  # already retired: not counted again
    off = SolvedRecord(k=0)
    assert off.visit(1, [1, 1]) is False and off.streaks == {} and off.retired == set()


def test_the_record_survives_a_json_round_trip():
    record = SolvedRecord(k=2)
    for row, rewards in ((3, [1, 1]), (3, [1, 1]), (9, [1, 1]), (4, [0, 1])):
        record.visit(row, rewards)
    state = json.loads(json.dumps(record.state_dict()))  # as trainer_state.json stores it
    assert state == {"k": 2, "streaks": [[9, 1]], "retired": [3]}
    again = SolvedRecord(k=2)
    again.load_state_dict(state)
    assert again.streaks == {9: 1} and again.retired == {3}
    assert again.visit(9, [1, 1]) is True  # row 9's first visit counted: the second retires it
    fresh = SolvedRecord(k=2)
    fresh.load_state_dict(None)  # a checkpoint from before the record existed
    assert fresh.retired == set() and fresh.streaks == {}


def test_the_sampler_never_yields_a_retired_row_and_covers_the_rest_each_epoch():
    sampler = EpochSampler(6, seed=0, shuffle=False)
    retired = {1, 4}
    assert sampler.take(3, skip=retired) == [0, 2, 3]
    assert sampler.take(3, skip=retired) == [5, 0, 2]  # epoch 1 starts after row 5
    assert sampler.epoch == 1
    shuffled = EpochSampler(10, seed=3)
    draws = shuffled.take(14, skip={2, 7})  # two epochs of the 8 live rows, less two
    assert set(draws[:8]) == {0, 1, 3, 4, 5, 6, 8, 9} and not {2, 7} & set(draws)
    with pytest.raises(DataError, match="all 6 training prompts are retired"):
        sampler.take(2, skip=set(range(6)))


def _trainer(prompts: int, *, k: int = 0, filtering: bool = False, extra: int = 3) -> TrainerConfig:
    t = TrainerConfig(prompts_per_step=prompts, seed=11)
    t.dynamic_sampling.retire_after_solved, t.dynamic_sampling.filter_groups = k, filtering
    t.dynamic_sampling.max_extra_rounds = extra
    return t


def _scripted(rewards_by_row: dict[int, list[float]], calls: list):
    """sample(): each row's scripted rewards; the payload names (row, seed) so moved groups can be traced."""
    def sample(round_, rows, seeds):
        calls.append((round_, list(rows), list(seeds)))
        return [Group(rewards_by_row[row], payload=(row, seed), local=f"prompt-{row}") for row, seed in zip(rows, seeds)]
    return sample


def _alone(obj):
    return [obj]


def test_dynamic_sampling_draws_rounds_until_the_batch_is_full():
    # rows 0 and 2 are uniform (no gradient), 1 and 3 varied; 2 prompts per step
    script = {0: [1, 1], 1: [0, 1], 2: [0, 0], 3: [1, 0], 4: [0, 1], 5: [1, 0]}
    calls = []
    dyn = DifficultyFilter(_trainer(2, filtering=True), EpochSampler(6, seed=0, shuffle=False))
    batch = dyn.collect(4, _scripted(script, calls), _alone)
    seeds = response_seeds(11, 4, [0, 1, 2, 3])  # the step's draw order: round 1 has slots 2 and 3
    assert calls == [(0, [0, 1], seeds[:2]), (1, [2, 3], seeds[2:])]
    assert batch.rows == batch.mine == [1, 3]  # the first two varied groups, in draw order
    assert [g.payload for g in batch.groups] == [(1, seeds[1]), (3, seeds[3])]
    assert batch.first_round == [[1, 1], [0, 1]]
    assert batch.metrics == {"dynamic/rounds": 2.0, "dynamic/groups_drawn": 4.0, "dynamic/groups_varied": 2.0,
                             "dynamic/groups_kept": 2.0, "dynamic/groups_padded": 0.0, "dynamic/groups_dropped": 2.0,
                             "dynamic/batch_full": 1.0}
    # the update's inputs: prompts as sampled, responses renumbered to their prompt, rewards prompt-major
    batch.groups = [Group([0, 1], payload=[_response(7)] * 2, local="p1"), Group([1, 0], payload=[_response(0)] * 2)]
    prompts, responses, rewards = batch.update_inputs(lambda row: f"encoded-{row}")
    assert prompts == ["p1", "encoded-3"] and [r.prompt_index for r in responses] == [0, 0, 1, 1]
    assert rewards == [0, 1, 1, 0]


def _response(prompt_index: int) -> Response:
    return Response(prompt_index, torch.tensor([1, 2]), torch.tensor([-0.5, -0.1]), True)


def test_a_batch_still_short_after_the_extra_rounds_is_padded_with_dropped_groups_and_retires_solved_rows():
    script = {0: [1, 1], 1: [0, 1], 2: [0, 0], 3: [1, 1], 4: [1, 1], 5: [0, 1]}
    dyn = DifficultyFilter(_trainer(2, k=1, filtering=True, extra=1), EpochSampler(6, seed=0, shuffle=False))
    batch = dyn.collect(0, _scripted(script, []), _alone)
    # drawn 0, 1 | 2, 3; varied: row 1 only; padded with the earliest uniform group, row 0
    assert batch.rows == [0, 1]
    assert batch.metrics == {"data/retired": 2.0, "data/retired_this_step": 2.0, "dynamic/rounds": 2.0,
                             "dynamic/groups_drawn": 4.0, "dynamic/groups_varied": 1.0, "dynamic/groups_kept": 1.0,
                             "dynamic/groups_padded": 1.0, "dynamic/groups_dropped": 2.0, "dynamic/batch_full": 0.0}
    assert dyn.record.retired == {0, 3}  # all-correct once, k = 1
    calls = []
    dyn.collect(1, _scripted(script, calls), _alone)  # rows 4, 5 | epoch 1: 0 and 3 are skipped -> 1, 2
    assert [c[1] for c in calls] == [[4, 5], [1, 2]]
    assert dyn.record.retired == {0, 3, 4}


def _run_ranks(world: int, script, steps: int = 2):
    """Each rank of a ``world``-process run as a thread; gather is an all-gather over them."""
    slots, barrier, out = [None] * world, threading.Barrier(world, timeout=30), [None] * world

    def rank(r):
        dyn = DifficultyFilter(_trainer(4, k=2, filtering=True), EpochSampler(12, seed=5), rank=r, world=world)

        def gather(obj):
            slots[r] = obj
            barrier.wait()
            everyone = list(slots)
            barrier.wait()
            return everyone

        batches = [dyn.collect(s, _scripted(script, []), gather) for s in range(steps)]
        out[r] = (batches, dyn.state_dict())

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_every_rank_picks_and_retires_the_same_as_one_process():
    script = {row: ([1, 1] if row % 3 == 0 else [0, 0] if row % 3 == 1 else [0, 1]) for row in range(12)}
    (single, single_state), = _run_ranks(1, script, steps=3)
    ranks = _run_ranks(2, script, steps=3)
    for step, one in enumerate(single):
        for r, (batches, state) in enumerate(ranks):
            b = batches[step]
            assert b.rows == one.rows and b.metrics == one.metrics and b.first_round == one.first_round
            assert b.mine == one.rows[r::2]
            # each group is the one sampled for its row with its own seed, whichever rank sampled it
            assert [g.payload for g in b.groups] == [g.payload for g in one.groups][r::2]
            assert state == single_state
    assert single_state["retired"]  # rows solved twice were retired on every rank alike


def test_the_config_keys_are_checked_with_the_fix():
    cfg = Config()
    cfg.model.name_or_path, cfg.data.train_files = "m", ["t.jsonl"]
    cfg.trainer.dynamic_sampling.retire_after_solved = -1
    cfg.trainer.dynamic_sampling.filter_groups, cfg.trainer.dynamic_sampling.max_extra_rounds = True, 0
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert "retire_after_solved=-1 must be >= 0" in str(e.value)
    assert "filter_groups=true with max_extra_rounds=0 can never replace a dropped group" in str(e.value)


def test_a_training_run_with_dynamic_sampling_pads_uniform_groups_and_logs_it(qwen25_dir, tmp_path, monkeypatch):
    """Every response right: every group is uniform, so each step draws 1 + 1 extra rounds, keeps none
    and pads the batch with the first round's groups; with k = 1 every drawn prompt retires."""
    from rlvr.config import load_config
    from rlvr.devtools.make_demo_data import main as make_data
    import rlvr.trainer

    data = tmp_path / "data"
    make_data(["--out", str(data), "--train", "8", "--val", "2"])
    cfg = load_config(os.path.join(ROOT, "recipes", "demo.yaml"), [
        f"model.name_or_path={qwen25_dir}", f"data.train_files={data}/train.jsonl", "data.val_files=[]",
        f"output_dir={tmp_path / 'run'}", "trainer.max_steps=2", "trainer.prompts_per_step=2", "rollout.group_size=2",
        "trainer.micro_batch_size=4", "rollout.micro_batch_size=4", "rollout.max_new_tokens=4",
        "checkpoint.save_final_model=false", "log.plots=false", "log.progress_bar=false", "log.wandb=false",
        "log.samples_every=0", "trainer.dynamic_sampling.filter_groups=true",
        "trainer.dynamic_sampling.max_extra_rounds=1", "trainer.dynamic_sampling.retire_after_solved=1"])
    trainer = rlvr.trainer.Trainer(cfg)
    trainer.reward_fn = lambda texts, answers, **columns: ([1.0] * len(texts), {})
    trainer.train()
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [(r["data/retired"], r["data/retired_this_step"]) for r in rows] == [(4, 4), (8, 4)]
    for r in rows:
        assert (r["dynamic/rounds"], r["dynamic/groups_drawn"], r["dynamic/groups_kept"], r["dynamic/groups_padded"],
                r["dynamic/batch_full"]) == (2, 4, 0, 2, 0)
        assert r["zero_std_groups"] == 1.0 and r["reward/mean"] == 1.0
    used = [json.loads(line)["indices"] for line in open(tmp_path / "run" / "prompts.jsonl")]
    order = EpochSampler(8, cfg.trainer.seed).take(8)
    assert used == [order[0:2], order[4:6]]  # the padding is each step's first round


def two_rows_always_right(completions: list[str], answers: list[str], id: list[str], **columns) -> list[float]:
    """train-0 and train-1 always right (uniform groups, retired at once); the rest by odd length (varied)."""
    return [1.0 if row in ("train-0", "train-1") else float(len(c) % 2) for c, row in zip(completions, id)]


@pytest.mark.slow
def test_two_processes_draw_pick_and_retire_as_one(qwen25_dir, tmp_path):
    """DeepSpeed ZeRO-2 on two CPU processes: the same rounds, picks, retired prompts and losses as one
    process, with groups moving between ranks (rank r updates on picks r, r + 2, ...)."""
    from tests.launching import assert_same_trajectory, make_data, rows, run, train_args

    data = make_data(str(tmp_path / "data"), rows=8)
    extra = ("trainer.dynamic_sampling.filter_groups=true", "trainer.dynamic_sampling.max_extra_rounds=2",
             "trainer.dynamic_sampling.retire_after_solved=1", "checkpoint.save_final_model=false",
             "reward.functions=[{name: 'tests.test_difficulty:two_rows_always_right'}]")
    runs = {}
    for name, processes in (("one", 1), ("two", 2)):
        out = str(tmp_path / name)
        result = run(train_args(qwen25_dir, data, out, *extra), config=None if processes == 1 else "zero2",
                     processes=processes)
        assert result.returncode == 0, result.stderr[-4000:]
        runs[name] = (rows(f"{out}/metrics.jsonl"), rows(f"{out}/prompts.jsonl"))
    (one, one_prompts), (two, two_prompts) = runs["one"], runs["two"]
    assert_same_trajectory(one, two)
    ours = [k for k in one[0] if k.startswith(("dynamic/", "data/"))]
    assert [[r[k] for k in ours] for r in one] == [[r[k] for k in ours] for r in two]
    assert [r["indices"] for r in one_prompts] == [r["indices"] for r in two_prompts]
    for r in two_prompts:
        assert r["by_rank"] == [r["indices"][0::2], r["indices"][1::2]]
    assert one[-1]["data/retired"] >= 2 and any(r["dynamic/rounds"] > 1 for r in one)
