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
