"""PNG plots of a run's ``metrics.jsonl``, one run or several overlaid.

    python -m rlvr.plot RUN_DIR                      # -> RUN_DIR/plots/*.png
    python -m rlvr.plot RUN_A RUN_B [--out DIR]      # overlay, e.g. SAPO against GRPO

Plots (each its own PNG, and all of them in ``overview.png``): training reward, validation
accuracy (pass@1, pass@k, maj@k, greedy), response length, policy entropy, groups with
zero reward variance, SAPO gate statistics (or the clip fraction of clipped losses), and
time per step by phase. The x axis is the RL step (one rollout batch), with whole-number
ticks. Rewards, accuracies and shares are all on one scale, fractions from 0 to 1, as in
``metrics.jsonl``. A panel whose metrics a run did not log says so instead of being left
blank. Overlaid runs get one colour each and one line style per metric, with the legend
below the axes, where it cannot cover a line.

Uses matplotlib's object API with the Agg canvas, never pyplot: no global state, no
display needed, and importing this module does not change a notebook's backend.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from rlvr.files import atomic_path
from rlvr.plot_panels import PANELS, Panel, Run, Series, load_runs

logger = logging.getLogger(__name__)

X_LABEL = "RL step (one rollout batch each)"
STYLES = ["-", "--", ":", "-."]
# Okabe-Ito: distinguishable with colour-blindness and in greyscale print
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


# --------------------------------------------------------------------------- drawing


def moving_average(ys: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` points (shorter at the start)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def _window(n: int) -> int:
    return max(1, min(25, n // 15))


LEGEND_FONT = 8  # points
LEGEND_COLUMNS = 3


def _legend_rows(panel: Panel, runs: Sequence[Run]) -> int:
    """Rows the legend below the axes takes: overlays, and stacked areas (which fill the axes);
    0 where the legend sits inside."""
    labels = {s.label for run in runs for s in panel.series(run.keys)}
    if len(runs) < 2:
        return -(-len(labels) // LEGEND_COLUMNS) if panel.stacked else 0
    entries = len(runs) + (len(labels) if len(labels) > 1 and not panel.stacked else 0)
    return -(-entries // LEGEND_COLUMNS)


def _below_axes_pt(panel: Panel, runs: Sequence[Run]) -> float:
    """Points under the axes for tick labels, the x label, the smoothing note and an overlay's legend."""
    rows = _legend_rows(panel, runs)
    return 34 + (12 if panel.smooth else 0) + (rows * 1.45 * LEGEND_FONT + 10 if rows else 0)


def draw_panel(ax, panel: Panel, runs: Sequence[Run], title_suffix: str = "") -> bool:
    """Draw ``panel`` for ``runs`` on the matplotlib axes ``ax``; returns whether anything was drawn.

    One run: a colour per metric, the legend inside at the least crowded place. Several runs:
    a colour per run and a line style per metric (the same style for a metric in every run),
    the legend below the axes (``_below_axes_pt`` says how much room it needs).
    """
    labels: list[str] = []  # metrics in first-seen order: their line style in an overlay
    for run in runs:
        for s in panel.series(run.keys):
            if s.label not in labels:
                labels.append(s.label)
    drawn, values = _draw_lines(ax, panel, runs, labels)
    ax.set_title(panel.title + title_suffix, fontsize=12)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(panel.y_label)
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, panel.missing, ha="center", va="center", transform=ax.transAxes, color="#57606a",
                fontsize=11, wrap=True)
        ax.set_xticks([])
        ax.set_yticks([])
        return False
    _set_limits(ax, panel, runs, values)
    _draw_legend(ax, panel, runs, labels)
    return True


def _draw_lines(ax, panel: Panel, runs: Sequence[Run], labels: list[str]) -> tuple[bool, list[float]]:
    """Each run's series (or stacked areas); returns whether anything was drawn, and the values drawn."""
    many = len(runs) > 1
    drawn = False
    values: list[float] = []
    for r, run in enumerate(runs):
        series = panel.series(run.keys)
        if panel.stacked:
            drawn |= _draw_stacked(ax, run, series, r, many)
            continue
        for s_i, s in enumerate(series):
            xs, ys = run.points(s.key, s.scale)
            if not xs:
                continue
            drawn = True
            values += ys
            colour = COLOURS[r % len(COLOURS)] if many else COLOURS[s_i % len(COLOURS)]
            style = STYLES[labels.index(s.label) % len(STYLES)] if many else "-"
            label = f"{run.label}: {s.label}" if many else s.label
            window = _window(len(xs))
            if panel.smooth and window > 1:
                ax.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8, linestyle=style)
                ax.plot(xs, moving_average(ys, window), color=colour, linewidth=1.8, linestyle=style, label=label)
            else:
                ax.plot(xs, ys, color=colour, linewidth=1.6, linestyle=style, label=label,
                        marker="o" if panel.markers or len(xs) < 3 else None, markersize=4)
    return drawn, values


def _set_limits(ax, panel: Panel, runs: Sequence[Run], values: list[float]) -> None:
    from matplotlib.ticker import MaxNLocator

    # Steps are whole numbers: integer ticks, every panel over the runs' whole span of steps
    # (an evaluation at one step alone would otherwise get an axis from 2.84 to 3.16).
    steps = [float(row.get("step", i + 1)) for run in runs for i, row in enumerate(run.rows)]
    first, last = min(steps), max(steps)
    if last - first < 2:
        first, last = first - 1, last + 1
    margin = 0.03 * (last - first)
    ax.set_xlim(first - margin, last + margin)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = panel.y_range
    if panel.unit_range and values and 0.0 <= min(values) and max(values) <= 1.0:
        lo, hi = 0.0, 1.0
    if lo is not None or hi is not None:
        pad = 0.02 * ((hi if hi is not None else 1.0) - (lo if lo is not None else 0.0))
        ax.set_ylim(None if lo is None else lo - pad, None if hi is None else hi + pad)  # lines at 0 or 1 stay visible


def _draw_legend(ax, panel: Panel, runs: Sequence[Run], labels: list[str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.transforms import offset_copy

    many = len(runs) > 1
    below = 34  # points: tick labels and the x label
    if panel.smooth and any(_window(len(run.rows)) > 1 for run in runs):
        ax.annotate(f"faint: per step; bold: moving average over {_window(max(len(run.rows) for run in runs))} steps",
                    xy=(0, 0), xycoords="axes fraction", xytext=(0, -below), textcoords="offset points",
                    va="top", fontsize=7, color="#57606a")
        below += 12
    if not many and not panel.stacked:
        ax.legend(fontsize=LEGEND_FONT, loc="best", framealpha=0.85)
        return
    # Below the axes, where no line can be. An overlay: the runs by colour, then the metrics by
    # style. One run's stacked areas: its own legend entries.
    if many:
        handles = [Line2D([], [], color=COLOURS[r % len(COLOURS)], linewidth=2, label=run.label)
                   for r, run in enumerate(runs)]
    else:
        handles = ax.get_legend_handles_labels()[0]
    if many and len(labels) > 1 and not panel.stacked:
        handles += [Line2D([], [], color="#57606a", linewidth=1.6, linestyle=STYLES[i % len(STYLES)], label=label)
                    for i, label in enumerate(labels)]
    anchor = offset_copy(ax.transAxes, fig=ax.figure, x=0, y=-below, units="points")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, 0), bbox_transform=anchor, fontsize=LEGEND_FONT,
              ncol=min(LEGEND_COLUMNS, len(handles)), frameon=False, borderaxespad=0, handlelength=3)


def _draw_stacked(ax, run: Run, series: list[Series], r: int, many: bool) -> bool:
    steps = sorted({float(row.get("step", i + 1)) for i, row in enumerate(run.rows)})
    layers, labels = [], []
    for s in series:
        values = dict(zip(*run.points(s.key)))
        if values:
            layers.append([values.get(x, 0.0) for x in steps])
            labels.append(s.label)
    if not layers:
        return False
    if many:  # stacked areas of several runs would hide each other: plot each run's total instead
        total = [sum(v) for v in zip(*layers)]
        ax.plot(steps, total, color=COLOURS[r % len(COLOURS)], linewidth=1.6, label=f"{run.label}: total")
    else:  # steps are discrete: flat bands per step, so a phase that ran at one step (eval) stays at that step
        bottom = [0.0] * len(steps)
        for layer, label, colour in zip(layers, labels, COLOURS):
            top = [b + v for b, v in zip(bottom, layer)]
            ax.fill_between(steps, bottom, top, step="mid", color=colour, alpha=0.85, linewidth=0, label=label)
            bottom = top
    return True


def summary_text(runs: Sequence[Run]) -> str:
    """A few numbers per run, for the overview's last cell."""
    from rlvr.metrics import best_eval

    lines = []
    for run in runs:
        _, rewards = run.points("reward/mean")
        steps = int(run.rows[-1].get("step", len(run.rows)))
        lines.append(run.label if len(run.label) <= 48 else run.label[:45] + "...")
        lines.append(f"  steps: {steps}")
        if rewards:
            head, tail = rewards[:5], rewards[-5:]
            lines.append(f"  reward: {sum(head) / len(head):.3f} (first {len(head)}) -> {sum(tail) / len(tail):.3f} "
                         f"(last {len(tail)})")
        best = best_eval(run.rows)
        if best is not None:
            evals = [r for r in run.rows if isinstance(r.get("eval/pass@1"), (int, float))]
            lines.append(f"  eval pass@1: best {best[1]:.3f} (step {best[0]}), last {evals[-1]['eval/pass@1']:.3f}")
        else:
            lines.append("  eval: none")
        seconds = sum(r.get("time/step_s", 0.0) for r in run.rows if isinstance(r.get("time/step_s"), (int, float)))
        lines.append(f"  wall time: {seconds / 60:.1f} min ({seconds / max(1, len(run.rows)):.1f} s/step)")
    return "\n".join(lines)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Fixed margins instead of a layout engine: the same picture, a fraction of the time.
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> None:
    with atomic_path(path, suffix=".png") as tmp:  # an open viewer never sees half a file
        fig.savefig(tmp, pil_kwargs={"compress_level": 3})  # zlib level 3: ~3x faster than 6, a little larger


def plot_runs(run_dirs: Sequence[str], out_dir: str, only: Sequence[str] | None = None) -> list[str]:
    """Write one PNG per panel and ``overview.png`` into ``out_dir``; returns the paths.

    ``only``: names of the panels to write (see ``PANELS``; "overview" for the grid); None = all.
    """
    names = [p.name for p in PANELS] + ["overview"]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"unknown plot(s) {unknown}; choose from {', '.join(names)}")
    runs = load_runs(run_dirs)
    os.makedirs(out_dir, exist_ok=True)
    suffix = f": {runs[0].label}" if len(runs) == 1 else f": {' vs '.join(r.label for r in runs)}"
    if len(suffix) > 70:
        suffix = f": {len(runs)} runs"
    paths = []
    for panel in PANELS:
        if only is not None and panel.name not in only:
            continue
        # axes 4.2 in high; the margin under them grows with an overlay's legend
        bottom_in = (_below_axes_pt(panel, runs) + 8) / 72
        height = 0.43 + 4.2 + bottom_in
        fig = _figure(9, height)
        fig.subplots_adjust(left=0.09, right=0.98, top=1 - 0.43 / height, bottom=bottom_in / height)
        draw_panel(fig.add_subplot(), panel, runs, suffix)
        path = os.path.join(out_dir, f"{panel.name}.png")
        _save(fig, path)
        paths.append(path)
    if only is not None and "overview" not in only:
        return paths
    cols, rows = 2, -(-(len(PANELS) + 1) // 2)
    axes_in, top_in = 3.2, 0.75
    gap_in = max(_below_axes_pt(p, runs) for p in PANELS) / 72 + 0.45  # room below a row, then the next title
    bottom_in = gap_in - 0.3
    height = top_in + rows * axes_in + (rows - 1) * gap_in + bottom_in
    fig = _figure(15, height)
    fig.subplots_adjust(left=0.06, right=0.985, top=1 - top_in / height, bottom=bottom_in / height,
                        hspace=gap_in / axes_in, wspace=0.16)
    for i, panel in enumerate(PANELS):
        draw_panel(fig.add_subplot(rows, cols, i + 1), panel, runs)
    ax = fig.add_subplot(rows, cols, len(PANELS) + 1)
    ax.axis("off")
    ax.text(0.02, 0.95, summary_text(runs), va="top", ha="left", fontsize=10, family="monospace",
            transform=ax.transAxes, wrap=True)
    fig.suptitle("rlvr" + suffix, fontsize=14)
    path = os.path.join(out_dir, "overview.png")
    _save(fig, path)
    return paths + [path]


def plot_run(run_dir: str, strict: bool = False) -> list[str]:
    """``<run_dir>/plots/*.png`` for one run. With ``strict=False`` (the trainer's call) a
    failure is logged and [] returned: plots must never stop a training run."""
    try:
        return plot_runs([run_dir], os.path.join(run_dir, "plots"))
    except Exception:
        if strict:
            raise
        logger.exception("could not write the plots of %s", run_dir)
        return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlvr.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl); several are overlaid")
    p.add_argument("--out", help="output folder (default: RUN/plots for one run, plots_<A>_vs_<B> for several)")
    p.add_argument("--only", help="comma-separated plots to write: " + ", ".join(x.name for x in PANELS) + ", overview")
    args = p.parse_args(argv)
    if args.out:
        out = args.out
    elif len(args.runs) == 1:
        out = os.path.join(args.runs[0], "plots")
    else:
        out = "plots_" + "_vs_".join(os.path.basename(os.path.abspath(r)) for r in args.runs)
    try:
        paths = plot_runs(args.runs, out, args.only.split(",") if args.only else None)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} plots to {os.path.abspath(out)}:")
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
