"""Where step time goes: the step timer (waiting for data vs the whole step) and the one-line
advice when training is input-bound.

Host clocks only: the timer never synchronises with the device on its own, so timing adds no
stall to the training loop; the caller decides when a window is closed on the device's clock.
"""

from __future__ import annotations

import os
import time

from ..data.workers import usable_cores


class StepTimer:
    """Time spent waiting for data vs the whole step, with host clocks only.

    Call ``data_start()`` before fetching a batch, ``data_end()`` when it is in hand and
    ``step_end()`` after the optimizer step. No device synchronisation happens except in
    ``summary(sync_fn)``: CUDA work is asynchronous, so per-step host times drift from device
    times, but over a window the host is held back by the device and the totals agree; passing
    ``sync_fn=torch.cuda.synchronize`` closes the window on the device's clock. A window spans
    from the first ``data_start()`` after the previous summary to the last ``step_end()`` (or
    the sync), so evaluation or checkpointing between windows does not count as step time.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._window_start: float | None = None
        self._data_start: float | None = None
        self._last_end: float | None = None
        self._wait = 0.0
        self._steps = 0

    def data_start(self) -> None:
        self._data_start = time.perf_counter()
        if self._window_start is None:
            self._window_start = self._data_start

    def data_end(self) -> None:
        if self._data_start is not None:
            self._wait += time.perf_counter() - self._data_start
            self._data_start = None

    def step_end(self) -> None:
        self._last_end = time.perf_counter()
        if self._window_start is None:  # data_start never called: time from the first step end
            self._window_start = self._last_end
            return
        self._steps += 1

    def summary(self, sync_fn=None) -> dict:
        """``{step_time, data_wait_frac, steps}`` of the window since the last summary; resets."""
        end: float | None
        if sync_fn is not None:
            sync_fn()
            end = time.perf_counter()
        else:
            end = self._last_end
        steps = self._steps
        total = (end - self._window_start) if (end is not None and self._window_start is not None) else 0.0
        window = {
            "step_time": total / steps if steps else 0.0,
            "data_wait_frac": min(self._wait / total, 1.0) if total > 0 else 0.0,
            "steps": steps,
        }
        self._reset()
        return window


class InputBoundAdvisor:
    """Says once, in one line, when training waits for data: ``update(data_wait_frac)`` per
    logging window returns the advice the first time ``windows`` windows in a row (not counting
    the first window of the process: compilation and loader start-up) spent at least
    ``threshold`` of their step time waiting for a batch, else None."""

    def __init__(self, workers: int, threshold: float = 0.2, windows: int = 3) -> None:
        self.workers, self.threshold, self.windows = workers, threshold, windows
        self._windows_seen = 0
        self._slow_run: list[float] = []  # data_wait_frac of the current run of slow windows
        self._advised = False

    def update(self, data_wait_frac: float) -> str | None:
        self._windows_seen += 1
        if self._advised or self._windows_seen == 1:
            return None
        self._slow_run = self._slow_run + [data_wait_frac] if data_wait_frac >= self.threshold else []
        if len(self._slow_run) < self.windows:
            return None
        self._advised = True
        cores = usable_cores()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return (
            f"input-bound: {100 * sum(self._slow_run) / len(self._slow_run):.0f}% of step time waited for "
            f"data over the last {len(self._slow_run)} logging windows (data.workers={self.workers} per "
            f"rank; this process may use {cores} CPU cores, shared by {local} local rank(s)): raise "
            "data.workers, write pre-resized shards (python -m vit_dist.data.shards --resize 320), or "
            "check how fast the shard storage reads"
        )
