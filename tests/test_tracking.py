"""The console's plain progress lines (console not a terminal): which steps, and the ETA by hand."""

from rlvr.config import Config
from rlvr.tracking import Tracker, _duration


def test_plain_progress_lines_and_eta(tmp_path, caplog):
    cfg = Config()
    cfg.output_dir, cfg.log.progress_bar = str(tmp_path), True  # pytest's stderr is not a terminal: plain lines
    tracker = Tracker(cfg, enabled=True, total_steps=50, start_step=10)
    assert tracker.bar is None and tracker.every == 2  # about 20 lines over 50 steps
    tracker.started = 1000.0
    line = tracker.progress_line(20, {"reward": "0.250", "s/step": "10.0"}, now=1100.0)
    # 10 steps in 100 s since the resume at step 10: 30 steps left take 300 s
    assert line == "step 20/50 (40%) reward 0.250 s/step 10.0 | elapsed 1m40s, ETA 5m00s"
    with caplog.at_level("INFO", logger="rlvr.tracking"):
        for step in range(11, 51):
            tracker.log({"step": step, "reward/mean": 0.5, "time/step_s": 1.0})
    steps = [int(r.getMessage().split()[1].split("/")[0]) for r in caplog.records]
    assert steps == [11] + list(range(12, 51, 2))  # the first step of this process, then every 2nd
    assert [_duration(s) for s in (4.4, 59.6, 61, 3600 * 3 + 300, float("nan"))] == ["4s", "1m00s", "1m01s", "3h05m",
                                                                                        "?"]
    tracker.close()
