"""TensorBoard for the run logger (``logging.tensorboard=true``): the scalars of the JSONL files
as TensorBoard events under ``output_dir/tensorboard``.

Events are written synchronously with tensorboard's own record format (no writer thread, the
same framing and protos torch's ``SummaryWriter`` writes) and flushed per record like the JSONL
files, so nothing can queue up, block a step or be lost in a thread. Any write failure (a full
disk) is one warning line and TensorBoard logging stops; the run goes on. A resumed run starts
a new event file that opens with a session-start marker at its first step, so TensorBoard drops
the superseded steps of the interrupted process, as the JSONL files do. ``check_tensorboard``
is the start-up check (every rank, before any work) that the package is installed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..core.errors import ConfigError
from .jsonl import as_number
from .sink import scalars

TENSORBOARD_DIR = "tensorboard"


def check_tensorboard() -> None:
    """Raise a one-line ConfigError when the tensorboard package cannot be imported."""
    try:
        # Imported here: tensorboard is optional (pip install vit_dist[tensorboard]).
        from tensorboard.compat.proto import event_pb2  # noqa: F401
        from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: F401
    except Exception as e:
        raise ConfigError(
            f"logging.tensorboard=true needs the tensorboard package ({type(e).__name__}: {e}); "
            "pip install vit_dist[tensorboard]"
        ) from None


class TensorBoardSink:
    """The TensorBoard event file of one run logger, a ``MetricSink``: ``start`` it, log to it,
    ``finish`` it.

    Train records become ``train/...`` scalars, evaluations ``eval/...``, as W&B charts them.
    Until ``start`` succeeds, and after any failure, logging and ``finish`` do nothing; warnings
    go through ``info``, the logger's printer.
    """

    def __init__(self, info: Callable[[str], None]) -> None:
        self.info = info
        self.path: Path | None = None
        self._file: BinaryIO | None = None
        self._writer: Any = None  # tensorboard's RecordWriter (untyped)

    def start(self, log_dir: Path, start_step: int = 0) -> None:
        """Open a new event file in ``log_dir``; ``start_step > 0`` (a resume) marks the steps
        after it as superseded."""
        try:
            # Imported here: tensorboard is optional and only loaded when enabled.
            from tensorboard.compat.proto import event_pb2
            from tensorboard.summary.writer.record_writer import RecordWriter

            log_dir.mkdir(parents=True, exist_ok=True)
            self.path = self._new_path(log_dir)
            self._file = open(self.path, "xb")  # noqa: SIM115  (open for the whole run, closed in finish)
            self._writer = RecordWriter(self._file)
            self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
            if start_step > 0:
                # TensorBoard's purge marker: events of this run at steps >= start_step + 1 in
                # the earlier files are from the interrupted process and are dropped.
                start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
                self._write(event_pb2.Event(wall_time=time.time(), step=start_step + 1, session_log=start))
        except Exception as e:  # TensorBoard trouble never stops a run
            self._fail("set-up", e)

    @staticmethod
    def _new_path(log_dir: Path) -> Path:
        """TensorBoard's file name (it reads the files of a directory in name order, and the
        name starts with the time); a counter keeps two files of one second apart."""
        stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        n = 0
        while (log_dir / f"{stem}.{n}").exists():
            n += 1
        return log_dir / f"{stem}.{n}"

    def log_train(self, step: int | None, record: dict) -> None:
        self.log(scalars("train", record), step)

    def log_eval(self, step: int | None, record: dict) -> None:
        self.log(scalars("eval", record), step)

    def summarize(self, summary: dict) -> None:
        """Nothing: the best evaluation is already a point of the ``eval/top1`` scalars."""

    def log(self, data: dict, step: Any) -> None:
        """Write the numeric values of ``data`` at ``step`` as scalars; on failure, warn once and
        stop TensorBoard logging."""
        number_step = as_number(step)
        if self._writer is None or number_step is None:
            return
        from tensorboard.compat.proto import event_pb2, summary_pb2  # loaded by start: no cost

        values = []
        for key, value in data.items():
            number = as_number(value)
            if number is not None:
                values.append(summary_pb2.Summary.Value(tag=key, simple_value=number))
        if not values:
            return
        try:
            event = event_pb2.Event(
                wall_time=time.time(), step=int(number_step), summary=summary_pb2.Summary(value=values)
            )
            self._write(event)
        except Exception as e:
            self._fail("write", e)

    def _write(self, event) -> None:
        if self._writer is None or self._file is None:  # never: start opened both, log checks
            raise RuntimeError("the TensorBoard event file is not open")
        self._writer.write(event.SerializeToString())
        self._file.flush()  # like the JSONL files: readable while the run goes

    def _fail(self, what: str, e: Exception) -> None:
        self.info(
            f"warning: tensorboard {what} failed ({type(e).__name__}: {e}); TensorBoard logging stopped"
        )
        self._close()

    def _close(self) -> None:
        file, self._file, self._writer = self._file, None, None
        if file is not None:
            # A close that fails (the disk is full) was reported by the write before it.
            with contextlib.suppress(Exception):
                file.close()

    def finish(self) -> None:
        """Close the event file."""
        self._close()
