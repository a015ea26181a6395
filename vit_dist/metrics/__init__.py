"""Run metrics, one job per module:

- ``runlog``: ``RunLogger``, the rank-0 logger (its list of sinks, resume records, best/last
  summary, progress display, final curves) and the factory of its standard sinks.
- ``sink``: ``MetricSink``, the interface every sink implements (train, eval, summary, finish).
- ``jsonl``: the JSONL record files: names, encoding, reading back, cutting back on resume, and
  ``JsonlSink``, which writes metrics.jsonl and eval.jsonl.
- ``wandb_sink``: W&B mode resolution, the key check, and ``WandbSink``, one W&B run's
  init/log/summary/finish (system metrics included).
- ``tensorboard_sink``: ``TensorBoardSink``, the optional TensorBoard event file, and the
  start-up check for it.
- ``curves``: ``draw_curves``/``plot_curves``, the curves PNG drawn from the JSONL files.
- ``hardware``: peak FLOP/s (datasheet table or measured matmul), MFU and peak memory.
- ``timing``: ``StepTimer`` (data wait vs step time) and ``InputBoundAdvisor``.

The names other modules use are re-exported here.
"""

from __future__ import annotations

from .curves import draw_curves, plot_curves
from .hardware import datasheet_peak, max_memory_mb, measure_matmul_peak, mfu, peak_flops, raised_peak
from .jsonl import read_jsonl
from .runlog import RunLogger
from .sink import MetricSink
from .tensorboard_sink import check_tensorboard
from .timing import InputBoundAdvisor, StepTimer
from .wandb_sink import resolve_wandb_mode

__all__ = [
    "InputBoundAdvisor",
    "MetricSink",
    "RunLogger",
    "StepTimer",
    "check_tensorboard",
    "datasheet_peak",
    "draw_curves",
    "max_memory_mb",
    "measure_matmul_peak",
    "mfu",
    "peak_flops",
    "raised_peak",
    "plot_curves",
    "read_jsonl",
    "resolve_wandb_mode",
]
