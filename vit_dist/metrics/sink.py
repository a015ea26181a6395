"""The metric sink: what ``RunLogger`` hands every destination of a run's metrics.

A sink receives each train record and each evaluation with its step, the best-so-far summary
whenever it changes, and ``finish`` once at the end. The JSONL files (``jsonl.JsonlSink``), W&B
(``wandb_sink.WandbSink``) and TensorBoard (``tensorboard_sink.TensorBoardSink``) implement it;
so can any other destination, passed to ``RunLogger`` as a ``SinkFactory``.

Sinks exist on the main rank only: the factory is called there, after the output directory
exists, so a sink may import and open what it needs in it and the other ranks never do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol


class MetricSink(Protocol):
    """One destination of a run's metrics (main rank only).

    ``step`` is the record's ``step`` as an int (None when it has none). A sink that can fail
    for reasons of its own (a network, an optional package) reports it through the logger's
    printer and carries on without raising: what it raises reaches the training loop, as a
    failing write of metrics.jsonl does.
    """

    def log_train(self, step: int | None, record: dict) -> None:
        """One train record (the trainer's per-window means: loss, lr, images/s, ...)."""

    def log_eval(self, step: int | None, record: dict) -> None:
        """One evaluation record (top1, top5, loss, ...)."""

    def summarize(self, summary: dict) -> None:
        """The best evaluation so far as summary keys (``best/eval_top1``, ``best/eval_top5``,
        ``best/step``): on a resume, when an evaluation improves on it, and at the end
        (``{}`` before the first evaluation)."""

    def finish(self) -> None:
        """The run's end: flush and close. Called once, after the logger's own files are written."""


# What builds a logger's sinks besides the JSONL files: called once, on the main rank, with the
# (created) output directory and the logger's printer, which keeps the progress bar intact.
SinkFactory = Callable[[Path, Callable[[str], None]], Iterable[MetricSink]]


def scalars(prefix: str, record: dict) -> dict[str, Any]:
    """``record`` without its step, keys under ``prefix/`` (``train/loss``, ``eval/top1``):
    the tags W&B and TensorBoard chart."""
    return {f"{prefix}/{key}": value for key, value in record.items() if key != "step"}
