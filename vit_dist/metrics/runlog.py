"""The rank-0 run logger: a run's metric sinks (JSONL files, W&B, TensorBoard), its progress
display, the best/last summary and the final curves.

Nothing here talks to ``torch.distributed``: the trainer passes ``is_main`` and every
``RunLogger`` method is a cheap no-op on the other ranks, so logging can never add a
collective (and never deadlock a rank that skipped it).

Every train record and evaluation goes to each of the logger's sinks (``sink.MetricSink``):
the JSONL files always, first; W&B and TensorBoard as ``RunLogger.create`` builds them from
a run's ``logging`` section. What is derived from the whole run stays here: the progress
display, ``summary.json``, ``eval.json``, ``resumes.jsonl`` and the curves.

Files written under ``output_dir`` (rank 0 only):

- ``metrics.jsonl``: one JSON object per ``log_train`` call, flushed at once so a crash
  loses at most the line being written (``jsonl.JsonlSink``).
- ``eval.jsonl``: one JSON object per ``log_eval`` call; ``eval.json``: the final evaluation.
- ``resumes.jsonl``: one ``{"step", "time"}`` object per resumed process (the step it resumed at).
- ``summary.json``: the best evaluation (highest top-1, the earliest on ties) and the last
  one, and the last train record; written at the end (and when a run is preempted). W&B's
  summary gets the best as ``best/eval_top1``, ``best/eval_top5`` and ``best/step`` beside
  the last values it keeps itself, as soon as an evaluation improves on it.
- ``curves.png``: train and eval loss, learning rate, eval top-1 and images/s against the step
  (and the epoch), with the resumes marked, drawn from the JSONL files so a resumed run's
  picture covers all its segments.
- ``wandb_run_id.txt`` and ``wandb/``: the W&B run id (reused on resume) and W&B's files, with
  W&B's system metrics unless ``logging.system_metrics=false``.
- ``tensorboard/``: with ``logging.tensorboard=true``, the same scalars as TensorBoard events.

The progress display is a tqdm bar on a terminal, otherwise one plain line per logged step
(what a batch job's log file wants).
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.atomic import write_json
from ..core.config import LoggingSection
from .curves import plot_curves
from .jsonl import (
    EVAL_FILE,
    RESUMES_FILE,
    JsonlSink,
    as_number,
    encode_record,
    json_default,
    read_jsonl,
    truncate_jsonl,
)
from .sink import MetricSink, SinkFactory
from .tensorboard_sink import TENSORBOARD_DIR, TensorBoardSink, check_tensorboard
from .wandb_sink import WandbSink, resolve_wandb_mode

if TYPE_CHECKING:
    from tqdm import tqdm

FINAL_EVAL_FILE = "eval.json"
SUMMARY_FILE = "summary.json"

SinkT = TypeVar("SinkT")


def _format_hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--:--"
    whole = int(round(seconds))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _format_number(value: Any, spec: str) -> str:
    number = as_number(value)
    return "-" if number is None else format(number, spec)


def _format_epoch(value: Any) -> str:
    number = as_number(value)
    if number is None or not math.isfinite(number):
        return "-"
    return str(int(number)) if number == int(number) else f"{number:.2f}"


def _step_of(record: dict) -> int | None:
    """The record's step as the sinks get it: an int, None when it has no finite number."""
    number = as_number(record.get("step"))
    return int(number) if number is not None and math.isfinite(number) else None


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class RunLogger:
    """Rank-0 logger of a run's metrics: hands every train record and evaluation to its sinks
    (metrics.jsonl/eval.jsonl first, then W&B, TensorBoard, ...) and keeps resumes.jsonl,
    summary.json, eval.json, the progress display and the final PNG itself.

    On non-main ranks every method is a cheap no-op (and nothing is written or imported: the
    sink factory is not called). ``start_step > 0`` marks a resumed run: the JSONL files keep
    their lines up to ``start_step`` and are appended to, and the best and last evaluation are
    read back from eval.jsonl; ``start_step == 0`` is a fresh run and the files start empty.
    """

    @classmethod
    def create(
        cls,
        output_dir: str,
        settings: LoggingSection,
        *,
        is_main: bool,
        total_steps: int,
        config: dict,
        start_step: int = 0,
        epoch_axis: bool | None = None,
    ) -> RunLogger:
        """A logger with the standard sinks a run's ``logging`` section asks for: the JSONL
        files, W&B unless ``logging.wandb`` is false, and TensorBoard events with
        ``logging.tensorboard``. ``config`` is what W&B records as the run's config.

        A resumed run (``start_step > 0``) continues the W&B run whose id is in
        ``wandb_run_id.txt`` (``resume="allow"``); a fresh one gets a new W&B run (the old one
        would drop every step up to its last one)."""
        s = settings
        # Argument errors are raised on every rank alike: failing on rank 0 only would leave
        # the other ranks waiting in their first collective.
        if str(s.mode).lower() not in ("auto", "offline", "online"):
            raise ValueError(f"logging.mode must be 'auto', 'offline' or 'online', got {s.mode!r}")
        if s.tensorboard:
            check_tensorboard()

        def sinks(out: Path, info: Callable[[str], None]) -> list[MetricSink]:
            built: list[MetricSink] = []
            if s.wandb:
                wandb = WandbSink(info)
                wandb.start(
                    out,
                    resolve_wandb_mode(s.mode),
                    project=s.project,
                    entity=s.entity,
                    run_name=s.name,
                    config=config,
                    resuming=int(start_step) > 0,
                    system_metrics=s.system_metrics,
                    system_interval=s.system_metrics_interval,
                )
                built.append(wandb)
            if s.tensorboard:
                board = TensorBoardSink(info)
                board.start(out / TENSORBOARD_DIR, int(start_step))
                built.append(board)
            return built

        return cls(
            output_dir,
            is_main=is_main,
            total_steps=total_steps,
            sinks=sinks,
            progress=s.progress,
            start_step=start_step,
            epoch_axis=epoch_axis,
        )

    def __init__(
        self,
        output_dir: str,
        *,
        is_main: bool,
        total_steps: int,
        sinks: SinkFactory | None = None,
        progress: str = "auto",
        start_step: int = 0,
        epoch_axis: bool | None = None,
    ):
        """``sinks`` builds the sinks besides the JSONL files (``create`` has the standard ones)."""
        self.is_main = bool(is_main)
        self.epoch_axis = epoch_axis
        self.sinks: list[MetricSink] = []
        self.best_eval: dict | None = None  # the best evaluation so far (highest top-1, earliest)
        self.last_eval: dict | None = None
        self.last_train: dict | None = None
        self._bar: tqdm | None = None
        self._finished = False
        # Raised on every rank alike (see create).
        if progress not in ("auto", "bar", "lines"):
            raise ValueError(f"progress must be 'auto', 'bar' or 'lines', got {progress!r}")
        if not self.is_main:
            return
        self.output_dir = Path(output_dir).absolute()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = int(total_steps)
        self.start_step = self._last_step = int(start_step)
        # The JSONL sink first: it cuts eval.jsonl back to start_step, and a resumed run carries
        # on from the best and last evaluation of its earlier segments that are left there.
        self.sinks.append(JsonlSink(self.output_dir, self.start_step))
        for record in read_jsonl(self.output_dir / EVAL_FILE):
            self._track_eval(record)
        self._record_resume()
        if sinks is not None:
            self.sinks.extend(sinks(self.output_dir, self.info))
        if self.best_eval is not None:
            self._summarize()
        # The bar and the ETA clock start after the sinks' set-up (W&B's takes about a second),
        # as close to the first step as this object gets.
        self._start_display(progress)

    def _record_resume(self) -> None:
        """resumes.jsonl: cut back to start_step, and a line for this process when it resumed."""
        path = self.output_dir / RESUMES_FILE
        truncate_jsonl(path, self.start_step)
        if self.start_step > 0:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            with open(path, "a", encoding="utf-8") as file:
                file.write(encode_record({"step": self.start_step, "time": now}) + "\n")

    def _start_display(self, progress: str) -> None:
        """Start the ETA clock, and the tqdm bar for ``progress="bar"`` (or "auto" on a terminal)."""
        self._start_time = time.perf_counter()
        if not (progress == "bar" or (progress == "auto" and _isatty(sys.stdout))):
            return
        # Imported here: tqdm is only needed for the bar (a terminal), not for plain lines.
        from tqdm import tqdm

        # smoothing=0: the ETA is remaining steps x mean time per step of this process,
        # the same rule as the plain lines (tqdm's rate excludes ``initial``).
        self._bar = tqdm(
            total=self.total_steps,
            initial=min(self.start_step, self.total_steps),
            file=sys.stdout,
            dynamic_ncols=True,
            smoothing=0,
            unit="step",
            desc="train",
        )

    def sink(self, kind: type[SinkT]) -> SinkT | None:
        """The first sink of type ``kind`` (None without one), for what only that sink knows."""
        return next((sink for sink in self.sinks if isinstance(sink, kind)), None)

    @property
    def wandb_mode(self) -> str:
        """The W&B mode actually in use after resolution and fallback: online, offline or disabled."""
        wandb = self.sink(WandbSink)
        return "disabled" if wandb is None else wandb.mode

    @property
    def wandb_run_dir(self) -> str | None:
        """The W&B run's directory (its offline segment, to sync), None without W&B."""
        wandb = self.sink(WandbSink)
        return None if wandb is None else wandb.run_dir

    def log_train(self, record: dict) -> None:
        """Hand ``record`` to every sink (metrics.jsonl first) and update the progress display."""
        if not self.is_main or self._finished:
            return
        step = _step_of(record)
        for sink in self.sinks:
            sink.log_train(step, record)
        step = self._last_step if step is None else step
        if self._bar is not None:
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(
                f"ep {_format_epoch(record.get('epoch'))} loss {_format_number(record.get('loss'), '.4f')} "
                f"lr {_format_number(record.get('lr'), '.1e')} "
                f"img/s {_format_number(record.get('images_per_sec'), '.0f')}",
                refresh=True,
            )
        else:
            print(self._train_line(record, step), flush=True)
        self._last_step = step
        self.last_train = record

    def _train_line(self, record: dict, step: int) -> str:
        done = step - self.start_step
        eta = None
        if done > 0:
            eta = (time.perf_counter() - self._start_time) / done * max(self.total_steps - step, 0)
        return (
            f"step {step}/{self.total_steps} ep {_format_epoch(record.get('epoch'))} "
            f"loss {_format_number(record.get('loss'), '.4f')} lr {_format_number(record.get('lr'), '.1e')} "
            f"img/s {_format_number(record.get('images_per_sec'), '.0f')} eta {_format_hms(eta)}"
        )

    def log_eval(self, record: dict) -> None:
        """Hand ``record`` to every sink (eval.jsonl first), print a one-line summary, and pass
        on the best-so-far summary when it improves."""
        if not self.is_main or self._finished:
            return
        step = _step_of(record)
        for sink in self.sinks:
            sink.log_eval(step, record)
        parts = [f"eval step {record.get('step', '-')}"]
        if "epoch" in record:
            parts.append(f"ep {_format_epoch(record['epoch'])}")
        for key, value in record.items():
            if key in ("step", "epoch", "num_samples"):
                continue
            number = as_number(value)
            parts.append(f"{key} {number:.4g}" if number is not None else f"{key} {value}")
        if "num_samples" in record:
            parts.append(f"({record['num_samples']} samples)")
        self.info(" ".join(parts))
        if self._track_eval(record):
            self._summarize()

    def _track_eval(self, record: dict) -> bool:
        """Note ``record`` as the last evaluation, and as the best if its top-1 beats the best
        so far (a tie keeps the earlier one, as the trainer's best checkpoint does); True then."""
        self.last_eval = record
        top1 = as_number(record.get("top1"))
        if top1 is None or not math.isfinite(top1):
            return False
        if self.best_eval is not None and top1 <= self.best_eval["top1"]:
            return False
        self.best_eval = record
        return True

    def _best_summary(self) -> dict:
        """The summary keys of the best evaluation ({} before the first)."""
        best = self.best_eval
        if best is None:
            return {}
        return {
            "best/eval_top1": best.get("top1"),
            "best/eval_top5": best.get("top5"),
            "best/step": best.get("step"),
        }

    def _summarize(self) -> None:
        summary = self._best_summary()
        for sink in self.sinks:
            sink.summarize(summary)

    def _write_summary(self, final_eval: dict | None) -> None:
        """summary.json: the best and last evaluation and the last train record."""
        if final_eval is not None and final_eval is not self.last_eval:
            self._track_eval(final_eval)
        best = self.best_eval
        summary = {
            "step": self._last_step,
            "best": None
            if best is None
            else {key: best[key] for key in ("step", "epoch", "top1", "top5", "loss") if key in best},
            "last_eval": self.last_eval,
            "last_train": self.last_train,
        }
        try:
            write_json(self.output_dir / SUMMARY_FILE, summary, indent=2, default=json_default)
        except OSError as e:  # a convenience copy of what the JSONL files hold: never the run's end
            self.info(f"warning: could not write {SUMMARY_FILE} ({type(e).__name__}: {e})")

    def info(self, msg: str) -> None:
        """Print on rank 0 without breaking the progress bar."""
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def finish(self, final_eval: dict | None = None) -> None:
        """Write eval.json, summary.json and curves.png, close the bar, then finish every sink
        (W&B prints how to sync)."""
        if not self.is_main or self._finished:
            return
        self._finished = True
        if final_eval is not None:
            write_json(self.output_dir / FINAL_EVAL_FILE, final_eval, indent=2, default=json_default)
        self._write_summary(final_eval)
        self._summarize()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        try:
            # Read from the JSONL files, which are flushed per record: complete while still open.
            png = plot_curves(self.output_dir, epoch_axis=self.epoch_axis)
            self.info(f"curves: {png}")
        except Exception as e:  # a plotting problem must not cost the end of a long run
            self.info(f"warning: could not draw curves ({type(e).__name__}: {e})")
        # Last: W&B's finish may wait minutes for its service; the run's files are written by then.
        for sink in self.sinks:
            sink.finish()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.finish(None)
