"""The picture of a run: train and eval loss, learning rate, eval top-1 and images/s against the
step, with an epoch axis on top for runs measured in epochs and a dashed line where the run was
resumed.

Drawn from the JSONL files rather than from memory, so a resumed run's picture covers all its
segments, and so it can be redrawn for any finished run directory. matplotlib's object API
with the Agg canvas is used: no pyplot global state and no display needed. ``draw_curves``
returns the figure (what the tests look at); ``plot_curves`` saves it as curves.png.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_path
from .jsonl import EVAL_FILE, METRICS_FILE, RESUMES_FILE, as_number, read_jsonl

CURVES_FILE = "curves.png"
RESUME_GID = "resume"  # the gid of the resume lines (how a test finds them)
MAX_EPOCH_TICKS = 12


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


def epoch_starts(records: list[dict]) -> list[tuple[float, int]]:
    """(step, epoch) at which each epoch the records show begins: the first step any record
    carries that epoch or a later one (epoch 0 begins at step 0). Exact where an evaluation
    ran at the epoch's end, else up to ``logging.every`` steps late."""
    first: dict[int, float] = {}
    for record in records:
        step, epoch = as_number(record.get("step")), as_number(record.get("epoch"))
        if step is None or epoch is None or not math.isfinite(epoch):
            continue
        epoch = int(epoch)
        first[epoch] = min(step, first.get(epoch, step))
    starts, later = [], math.inf
    for epoch in sorted(first, reverse=True):
        later = min(later, first[epoch])
        starts.append((0.0 if epoch == 0 else later, epoch))
    return sorted(starts)


def _draw_panel(
    ax,
    title: str,
    lines: list,
    resumes: Sequence[float] = (),
    epochs: Sequence[tuple[float, int]] = (),
    logy: bool = False,
):
    """One subplot: ``lines`` holds (steps, values, plot keyword arguments); "no data" if all
    are empty. ``resumes``: steps to mark with a dashed line; ``epochs``: (step, epoch) ticks
    for an epoch axis on top."""
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    drawn = False
    for steps, values, plot_kwargs in lines:
        if steps:
            ax.plot(steps, values, **plot_kwargs)
            drawn = True
    for i, step in enumerate(resumes):
        ax.axvline(step, color="0.4", ls="--", lw=0.9, gid=RESUME_GID, label="_nolegend_" if i else "resumed")
    if epochs:
        stride = max(1, math.ceil(len(epochs) / MAX_EPOCH_TICKS))
        shown = epochs[::stride]
        top = ax.secondary_xaxis("top")
        top.set_xticks([step for step, _ in shown])
        top.set_xticklabels([str(epoch) for _, epoch in shown])
        top.set_xlabel("epoch")
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    if logy and all(value > 0 for _, values, _ in lines for value in values):
        ax.set_yscale("log")
    if sum(1 for steps, _, _ in lines if steps) + bool(resumes) > 1:
        ax.legend()


def draw_curves(output_dir: str | os.PathLike, *, epoch_axis: bool | None = None):
    """The figure of a run directory: train and eval loss, lr, eval top-1 (and EMA top-1) and
    images/s against the step, resumes marked. ``epoch_axis``: an epoch axis on top (None:
    when the records span more than one epoch)."""
    # Imported here: matplotlib is slow to import and only needed once, at the end of a run.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    train = read_jsonl(output_dir / METRICS_FILE)
    evals = read_jsonl(output_dir / EVAL_FILE)
    resumes = sorted(
        {
            step
            for record in read_jsonl(output_dir / RESUMES_FILE)
            if (step := as_number(record.get("step"))) is not None
        }
    )
    epochs = epoch_starts(train + evals)
    if epoch_axis is None:
        epoch_axis = len(epochs) > 1
    epochs = epochs if epoch_axis else []

    fig = Figure(figsize=(12, 8), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()

    steps, loss = _series(train, "loss")
    loss_lines = [(steps, loss, {"lw": 0.8, "alpha": 0.5 if len(steps) > 50 else 1.0, "label": "train loss"})]
    if len(steps) > 50:
        smoothed = _moving_average(loss, max(len(steps) // 50, 5))
        loss_lines.append((steps, smoothed, {"lw": 1.5, "label": "train loss (smoothed)"}))
    loss_lines.append((*_series(evals, "loss"), {"marker": "o", "ms": 3, "label": "eval loss"}))
    panel: dict[str, Any] = dict(resumes=resumes, epochs=epochs)
    _draw_panel(axes[0], "loss", loss_lines, **panel)
    _draw_panel(axes[1], "learning rate", [(*_series(train, "lr"), {"lw": 1.2})], **panel)
    top1 = [(*_series(evals, "top1"), {"marker": "o", "ms": 3, "label": "top1"})]
    if any("ema_top1" in record for record in evals):
        top1.append((*_series(evals, "ema_top1"), {"marker": "s", "ms": 3, "label": "ema_top1"}))
    _draw_panel(axes[2], "eval top-1", top1, **panel)
    _draw_panel(axes[3], "images/s (global)", [(*_series(train, "images_per_sec"), {"lw": 1.0})], **panel)
    return fig


def plot_curves(
    output_dir: str | os.PathLike, out_name: str = CURVES_FILE, *, epoch_axis: bool | None = None
) -> Path:
    """Draw ``draw_curves`` into ``output_dir/out_name`` (a PNG)."""
    fig = draw_curves(output_dir, epoch_axis=epoch_axis)
    out = Path(output_dir) / out_name
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
