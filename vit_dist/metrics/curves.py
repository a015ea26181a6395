"""The picture of a run: train loss, learning rate, eval top-1 and images/s against the step.

Drawn from the two JSONL files rather than from memory, so a resumed run's picture covers all
its segments, and so it can be redrawn for any finished run directory. matplotlib's object API
with the Agg canvas is used: no pyplot global state and no display needed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..atomic import atomic_path
from .jsonl import EVAL_FILE, METRICS_FILE, as_number, read_jsonl

CURVES_FILE = "curves.png"


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key``, sorted and de-duplicated by step (the last record of a step
    wins), so files from runs resumed by older code, or with an interrupted truncation, still
    draw cleanly."""
    by_step: dict[float, float] = {}
    for record in records:
        step, value = as_number(record.get("step")), as_number(record.get(key))
        if step is not None and value is not None and math.isfinite(value):
            by_step[step] = value
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


def _moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    averages, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        averages.append(total / min(i + 1, window))
    return averages


def _draw_panel(ax, title: str, lines: list, logy: bool = False) -> None:
    """One subplot: ``lines`` holds (steps, values, plot keyword arguments); "no data" if all
    are empty."""
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    drawn = False
    for steps, values, plot_kwargs in lines:
        if steps:
            ax.plot(steps, values, **plot_kwargs)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    if logy and all(value > 0 for _, values, _ in lines for value in values):
        ax.set_yscale("log")
    if sum(1 for steps, _, _ in lines if steps) > 1:
        ax.legend()


def plot_curves(output_dir: str | os.PathLike, out_name: str = CURVES_FILE) -> Path:
    """Draw train loss, lr, eval top-1 (and EMA top-1) and images/s vs step into a PNG."""
    # Imported here: matplotlib is slow to import and only needed once, at the end of a run.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    train = read_jsonl(output_dir / METRICS_FILE)
    evals = read_jsonl(output_dir / EVAL_FILE)

    fig = Figure(figsize=(12, 8), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()

    steps, loss = _series(train, "loss")
    loss_lines = [(steps, loss, {"lw": 0.8, "alpha": 0.5 if len(steps) > 50 else 1.0, "label": "loss"})]
    if len(steps) > 50:
        smoothed = _moving_average(loss, max(len(steps) // 50, 5))
        loss_lines.append((steps, smoothed, {"lw": 1.5, "label": "smoothed"}))
    _draw_panel(axes[0], "train loss", loss_lines)
    _draw_panel(axes[1], "learning rate", [(*_series(train, "lr"), {"lw": 1.2})])
    top1 = [(*_series(evals, "top1"), {"marker": "o", "ms": 3, "label": "top1"})]
    if any("ema_top1" in record for record in evals):
        top1.append((*_series(evals, "ema_top1"), {"marker": "s", "ms": 3, "label": "ema_top1"}))
    _draw_panel(axes[2], "eval top-1", top1)
    _draw_panel(axes[3], "images/s (global)", [(*_series(train, "images_per_sec"), {"lw": 1.0})])

    out = output_dir / out_name
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
