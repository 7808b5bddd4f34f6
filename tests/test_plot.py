"""python -m rlvr.plot: PNG files exist and are real, non-trivial images, for one run and overlaid runs."""

import json
import random

import pytest
from PIL import Image, ImageStat

from rlvr.plot import PANELS, main, moving_average, plot_run, plot_runs


def write_run(folder, loss: str, steps: int = 60, with_eval: bool = True, seed: int = 0):
    """A synthetic run: metrics.jsonl shaped like the trainer's, and config.yaml naming the loss."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"output_dir: {folder}\nalgorithm:\n  loss: {loss}\n")
    rows = []
    for s in range(1, steps + 1):
        progress = s / steps
        row = {"step": s, "reward/mean": min(1.0, 0.1 + 0.8 * progress + rng.uniform(-0.1, 0.1)),
               "response_length/mean": 40 + 20 * progress + rng.uniform(-3, 3), "response_length/max": 64,
               "entropy": 2.0 - progress, "zero_std_groups": max(0.0, 0.8 - progress + rng.uniform(-0.1, 0.1)),
               "time/rollout_s": 3 + rng.random(), "time/reward_s": 0.1, "time/update_s": 2 + rng.random(),
               "time/step_s": 5.5}
        if loss == "sapo":
            row.update({"sapo/gate_pos": 0.95 - 0.1 * progress, "sapo/gate_neg": 0.9, "sapo/gate_below_half": 0.02})
        else:
            row["clip_frac"] = 0.05 * progress
        if with_eval and s % 10 == 0:
            row.update({"eval/pass@1": 0.8 * progress, "eval/pass@2": 0.85 * progress, "eval/pass@8": 0.95 * progress,
                        "eval/maj@8": 0.9 * progress, "eval/greedy": 0.88 * progress, "time/eval_s": 4.0,
                        "eval/response_length/mean": 50.0})
        rows.append(row)
    rows[min(3, steps - 1)]["entropy"] = "nan"  # the tracker writes non-finite values as strings
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def assert_real_png(path, min_size=(600, 400)):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    image = Image.open(path)
    image.verify()
    image = Image.open(path).convert("RGB")
    assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
    # Non-trivial: many colours (lines, text, antialiasing), not a blank or single-colour canvas.
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, f"{path}: only {len(colours or [])} colours"
    stddev = ImageStat.Stat(image.convert("L")).stddev[0]
    assert stddev > 5, f"{path}: almost uniform (stddev {stddev:.1f})"
    # Ink (non-white pixels) covers a fair share and spreads over most of the canvas
    grey = image.convert("L")
    ink = sum(grey.histogram()[:230])
    assert ink > 0.01 * image.size[0] * image.size[1], f"{path}: almost no ink"
    left, top, right, bottom = grey.point(lambda v: 255 if v < 230 else 0).getbbox()
    assert right - left > 0.7 * image.size[0] and bottom - top > 0.7 * image.size[1], f"{path}: drawing is tiny"


def test_moving_average():
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    assert moving_average([5.0], 3) == [5.0]


def test_plot_one_run_writes_every_panel(tmp_path):
    run = write_run(tmp_path / "sapo-run", "sapo")
    paths = plot_run(str(run), strict=True)
    names = sorted(p.rsplit("/", 1)[1] for p in paths)
    assert names == sorted([f"{p.name}.png" for p in PANELS] + ["overview.png"])
    for path in paths:
        assert path.startswith(str(run / "plots"))
        assert_real_png(path)
    assert Image.open(run / "plots" / "overview.png").size[1] > 1500  # the grid of every panel


def test_overlay_sapo_and_grpo_and_missing_panels(tmp_path, capsys):
    a = write_run(tmp_path / "a", "sapo", seed=1)
    b = write_run(tmp_path / "b", "grpo", steps=40, with_eval=False, seed=2)
    out = tmp_path / "compare"
    assert main([str(a), str(b), "--out", str(out), "--only", "reward,eval_accuracy,sapo_gate,timing"]) == 0
    assert "wrote 4 plots" in capsys.readouterr().out
    for name in ("reward", "eval_accuracy", "sapo_gate", "timing"):
        assert_real_png(out / f"{name}.png")
    # The overlay holds both runs: it differs from run a's picture of the same panel.
    plot_runs([str(a)], str(tmp_path / "a-only"), only=["reward"])
    assert (out / "reward.png").read_bytes() != (tmp_path / "a-only" / "reward.png").read_bytes()
    assert main([str(a), "--only", "rewards"]) == 2  # a typo names the valid plots
    assert "choose from reward, eval_accuracy" in capsys.readouterr().err


def test_run_without_eval_or_with_nan_only_still_plots(tmp_path):
    run = write_run(tmp_path / "r", "grpo", steps=3, with_eval=False)
    paths = plot_runs([str(run)], str(run / "plots"), only=["eval_accuracy", "reward"])
    assert len(paths) == 2
    assert_real_png(tmp_path / "r" / "plots" / "eval_accuracy.png")  # says "no evaluation", still an image


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert plot_run(str(tmp_path / "empty")) == []  # the trainer's call never raises
    with pytest.raises(FileNotFoundError):
        plot_run(str(tmp_path / "empty"), strict=True)


def _drawn(panel_name, run_dirs):
    """The axes of one panel drawn for ``run_dirs`` on a fresh figure, rendered."""
    from rlvr.plot import _figure, draw_panel, load_runs

    fig = _figure(9, 6)
    fig.subplots_adjust(bottom=0.3)
    ax = fig.add_subplot()
    draw_panel(ax, next(p for p in PANELS if p.name == panel_name), load_runs([str(d) for d in run_dirs]))
    fig.canvas.draw()
    return ax


def test_reward_and_accuracy_share_one_scale(tmp_path):
    run = write_run(tmp_path / "r", "sapo", steps=20)
    reward, accuracy = _drawn("reward", [run]), _drawn("eval_accuracy", [run])
    assert reward.get_ylim() == pytest.approx((-0.02, 1.02)) and accuracy.get_ylim() == pytest.approx((-0.02, 1.02))
    # accuracy is plotted as the fraction metrics.jsonl holds (pass@1 = 0.8 * step / 20), not in percent
    line = next(l for l in accuracy.get_lines() if l.get_label().startswith("pass@1"))
    assert list(line.get_xdata()) == [10.0, 20.0] and list(line.get_ydata()) == pytest.approx([0.4, 0.8])
    assert "(0-1)" in accuracy.get_ylabel() and "%" not in accuracy.get_ylabel()
    # a reward beyond 1 (shaping terms) keeps an automatic axis rather than being cut off
    rows = [json.loads(x) for x in open(run / "metrics.jsonl")]
    rows[5]["reward/mean"] = 1.3
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _drawn("reward", [run]).get_ylim()[1] > 1.3


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 60])
def test_step_ticks_are_whole_numbers(tmp_path, steps):
    run = write_run(tmp_path / "r", "sapo", steps=steps, with_eval=False)
    rows = [json.loads(x) for x in open(run / "metrics.jsonl")]
    rows[-1]["eval/pass@1"] = 0.5  # one evaluation, at the last step
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("reward", "eval_accuracy", "timing"):
        ax = _drawn(name, [run])
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (name, ticks)
        assert lo < 1 and hi > steps  # every panel spans the run's steps


def test_overlay_legend_is_outside_the_axes(tmp_path):
    a = write_run(tmp_path / "a", "sapo", seed=1)
    b = write_run(tmp_path / "b", "grpo", steps=40, seed=2)
    for name in ("reward", "eval_accuracy", "sapo_gate", "timing"):
        ax = _drawn(name, [a, b])
        legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.y1 < box.y0, (name, legend, box)  # entirely below the axes: it covers no line
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[:2] == ["a (sapo)", "b (grpo)"], labels  # runs by colour first
    labels = [t.get_text() for t in _drawn("eval_accuracy", [a, b]).get_legend().get_texts()]
    assert labels[2:] == ["pass@1 (mean over samples)", "pass@8 (unbiased)", "maj@8 (majority vote)",
                          "greedy decoding"]  # then each metric once, by line style
    styles = {l.get_label(): l.get_linestyle() for l in _drawn("eval_accuracy", [a, b]).get_lines()}
    assert styles["a (sapo): maj@8 (majority vote)"] == styles["b (grpo): maj@8 (majority vote)"] == ":"
