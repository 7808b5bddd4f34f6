"""The trainer's own rules: how a step splits into micro-batches, and the learning-rate schedule across resumes."""

import pytest

from rlvr.config import Config


def test_deepspeed_is_told_one_sample_per_micro_batch_under_a_token_budget():
    from rlvr.trainer import micro_batching

    cfg = Config()
    cfg.trainer.prompts_per_step, cfg.rollout.group_size, cfg.trainer.micro_batch_size = 4, 4, 4
    assert micro_batching(cfg, world=2) == (4, 2)  # 8 sequences per rank: 2 micro-batches of 4
    cfg.trainer.micro_batch_tokens = 4096
    assert micro_batching(cfg, world=2) == (1, 8)  # the same 8 samples per optimizer step
    cfg.trainer.num_minibatches = 3
    with pytest.raises(ValueError, match="num_minibatches=3 does not divide; pick a num_minibatches that divides 8"):
        micro_batching(cfg, world=2)


def test_lr_schedule_stays_continuous_when_max_steps_changes():
    """Cosine from 1 to min_lr_ratio=0.1 over 4 steps; factors by hand: 0.1 + 0.9 * (1 + cos(pi * p)) / 2."""
    from rlvr.trainer import LRSchedule

    old = LRSchedule("cosine", warmup=0, min_ratio=0.1, total=4)
    assert [round(old(k), 5) for k in range(5)] == [1.0, 0.86820, 0.55, 0.23180, 0.1]  # p = k / 4
    # Stopped after step 2 (p = 0.5), resumed with total 6: p goes 0.5 -> 1 over steps 2..6.
    new = LRSchedule("cosine", warmup=0, min_ratio=0.1, total=6)
    assert round(new(2), 5) == 0.775  # without the anchor: p = 2/6, the lr would jump up from 0.55 to 0.775 ...
    new.resume(old.state_dict(), step=2)
    assert new.anchor == (2, 0.5)
    # ... with it: 0.55 at the resume step, p = 0.625, 0.75, 0.875, 1.0 after it
    assert [round(new(k), 5) for k in range(2, 7)] == [0.55, 0.37779, 0.23180, 0.13425, 0.1]
    # A finished run (step 4 of 4, p = 1) extended to 6 stays at the floor: no jump back up.
    done = LRSchedule("cosine", warmup=0, min_ratio=0.1, total=6)
    done.resume(old.state_dict(), step=4)
    assert [done(k) for k in (4, 5)] == [0.1, 0.1]
    # Extended twice: the second resume continues the first's anchored schedule (p(4) = 0.75 there).
    again = LRSchedule("cosine", warmup=0, min_ratio=0.1, total=8)
    again.resume(new.state_dict(), step=4)
    assert again.anchor == (4, 0.75) and round(again(4), 5) == round(new(4), 5) == 0.23180
    # The same length, or a resume still inside the warmup: nothing to adjust.
    same = LRSchedule("cosine", warmup=0, min_ratio=0.1, total=4)
    same.resume(old.state_dict(), step=2)
    assert same.anchor is None and same(3) == old(3)
    warm = LRSchedule("cosine", warmup=3, min_ratio=0.0, total=10)
    warm.resume(LRSchedule("cosine", 3, 0.0, 6).state_dict(), step=2)
    assert warm.anchor is None and warm(2) == 0.75 and warm(3) == 1.0


def _retiring_run(model_dir, data_dir, out_dir, steps: int, *extra):
    """A tiny run whose every response is right: with retire_after_solved=1 each drawn prompt retires."""
    import os

    import rlvr.trainer
    from rlvr.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "recipes", "demo.yaml"), [
        f"model.name_or_path={model_dir}", f"data.train_files={data_dir}/train.jsonl", "data.val_files=[]",
        f"output_dir={out_dir}", f"trainer.max_steps={steps}", "trainer.prompts_per_step=2", "rollout.group_size=2",
        "trainer.micro_batch_size=4", "rollout.micro_batch_size=4", "rollout.max_new_tokens=4",
        "checkpoint.every_steps=1", "checkpoint.save_final_model=false", "log.plots=false", "log.progress_bar=false",
        "log.wandb=false", "log.samples_every=0", "trainer.dynamic_sampling.retire_after_solved=1", *extra])
    trainer = rlvr.trainer.Trainer(cfg)
    trainer.reward_fn = lambda texts, answers, **columns: ([1.0] * len(texts), {})
    trainer.train()


def test_a_resumed_run_keeps_the_retired_prompts(qwen25_dir, tmp_path):
    """Retired prompts are in trainer_state.json: stopped after step 2 and resumed, step 3 has the 4
    prompts of steps 1-2 retired plus its own 2, and retires what the uninterrupted run retires."""
    import json

    from rlvr.devtools.make_demo_data import main as make_data

    make_data(["--out", str(tmp_path / "data"), "--train", "8", "--val", "2"])
    _retiring_run(qwen25_dir, tmp_path / "data", tmp_path / "whole", 3)
    _retiring_run(qwen25_dir, tmp_path / "data", tmp_path / "split", 2)
    _retiring_run(qwen25_dir, tmp_path / "data", tmp_path / "split", 3, "resume=auto")

    def retired(run):
        with open(tmp_path / run / "metrics.jsonl") as f:
            return [json.loads(line)["data/retired"] for line in f]

    def state(run, step):
        with open(tmp_path / run / "checkpoints" / f"step_{step:06d}" / "trainer_state.json") as f:
            return json.load(f)

    assert retired("whole") == retired("split") == [2, 4, 6]
    with open(tmp_path / "whole" / "prompts.jsonl") as f:
        used = [row for line in f for row in json.loads(line)["indices"]]
    assert len(set(used)) == 6  # no retired prompt drawn again
    assert state("split", 3)["difficulty"] == state("whole", 3)["difficulty"] == {
        "k": 1, "streaks": [], "retired": sorted(used)}
