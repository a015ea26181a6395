"""The rank-0 run logger: a run's JSONL files, its progress display, W&B and the final curves.

Nothing here talks to ``torch.distributed``: the trainer passes ``is_main`` and every
``RunLogger`` method is a cheap no-op on the other ranks, so logging can never add a
collective (and never deadlock a rank that skipped it).

Files written under ``output_dir`` (rank 0 only):

- ``metrics.jsonl``: one JSON object per ``log_train`` call, flushed at once so a crash
  loses at most the line being written.
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
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..config import Config
from .curves import plot_curves
from .jsonl import (
    EVAL_FILE,
    METRICS_FILE,
    RESUMES_FILE,
    as_number,
    encode_record,
    json_default,
    read_jsonl,
    truncate_jsonl,
)
from .tensorboard_sink import TENSORBOARD_DIR, TensorBoardSink, check_tensorboard
from .wandb_sink import WandbSink, resolve_wandb_mode

FINAL_EVAL_FILE = "eval.json"
SUMMARY_FILE = "summary.json"


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


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class RunLogger:
    """Rank-0 sink for a run's metrics: metrics.jsonl, eval.jsonl, resumes.jsonl, summary.json,
    progress display, W&B, TensorBoard, final PNG.

    On non-main ranks every method is a cheap no-op (and nothing is written or imported).
    ``start_step > 0`` marks a resumed run: the JSONL files keep their lines up to
    ``start_step`` and are appended to, and the W&B run id in ``wandb_run_id.txt`` is reused
    with ``resume="allow"``. ``start_step == 0`` is a fresh run: the files start empty and a
    new W&B run is created (the old one would drop every step up to its last one).
    """

    @classmethod
    def for_run(cls, cfg: Config, *, is_main: bool, total_steps: int, start_step: int) -> RunLogger:
        """The logger a run's ``logging.*`` section and ``output_dir`` describe."""
        log = cfg.logging
        # An epoch axis on the curves for runs whose length is given in epochs.
        epoch_axis = cfg.train.steps is None and cfg.train.epochs is not None
        return cls(
            cfg.output_dir,
            is_main=is_main,
            total_steps=total_steps,
            config=cfg.to_dict(),
            wandb_enabled=log.wandb,
            wandb_mode=log.mode,
            project=log.project,
            entity=log.entity,
            run_name=log.name,
            progress=log.progress,
            start_step=start_step,
            system_metrics=log.system_metrics,
            system_metrics_interval=log.system_metrics_interval,
            tensorboard=log.tensorboard,
            epoch_axis=epoch_axis,
        )

    def __init__(
        self,
        output_dir: str,
        *,
        is_main: bool,
        total_steps: int,
        config: dict,
        wandb_enabled: bool = True,
        wandb_mode: str = "auto",
        project: str = "vit_dist",
        entity: str | None = None,
        run_name: str | None = None,
        progress: str = "auto",
        start_step: int = 0,
        system_metrics: bool = True,
        system_metrics_interval: float = 15.0,
        tensorboard: bool = False,
        epoch_axis: bool | None = None,
    ):
        self.is_main = bool(is_main)
        self.wandb_sink = WandbSink(info=self.info)
        self.tensorboard_sink = TensorBoardSink(info=self.info)
        self.epoch_axis = epoch_axis
        self.best_eval: dict | None = None  # the best evaluation so far (highest top-1, earliest)
        self.last_eval: dict | None = None
        self.last_train: dict | None = None
        self._bar = None
        self._finished = False
        # Argument errors are raised on every rank alike: failing on rank 0 only would leave
        # the other ranks waiting in their first collective.
        if progress not in ("auto", "bar", "lines"):
            raise ValueError(f"progress must be 'auto', 'bar' or 'lines', got {progress!r}")
        if str(wandb_mode).lower() not in ("auto", "offline", "online"):
            raise ValueError(f"wandb_mode must be 'auto', 'offline' or 'online', got {wandb_mode!r}")
        if tensorboard:
            check_tensorboard()
        if not self.is_main:
            return
        self.output_dir = Path(output_dir).absolute()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self._last_step = self.start_step

        self.metrics_path = self.output_dir / METRICS_FILE
        self.eval_path = self.output_dir / EVAL_FILE
        resumes_path = self.output_dir / RESUMES_FILE
        for path in (self.metrics_path, self.eval_path, resumes_path):
            truncate_jsonl(path, self.start_step)
        # A resumed run carries on from the best and last evaluation of its earlier segments.
        for record in read_jsonl(self.eval_path):
            self._track_eval(record)
        if self.start_step > 0:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            record = {"step": self.start_step, "time": now}
            with open(resumes_path, "a", encoding="utf-8") as file:
                file.write(encode_record(record) + "\n")
        # Kept open for the whole run (closed in finish) and flushed per record, so the files
        # can be tailed while the run is going and a crash loses at most one line.
        self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self._eval_file = open(self.eval_path, "a", encoding="utf-8")  # noqa: SIM115

        if wandb_enabled:
            self.wandb_sink.start(
                self.output_dir,
                resolve_wandb_mode(wandb_mode),
                project=project,
                entity=entity,
                run_name=run_name,
                config=config,
                resuming=self.start_step > 0,
                system_metrics=system_metrics,
                system_interval=system_metrics_interval,
            )
            self.wandb_sink.summarize(self._best_summary())
        if tensorboard:
            self.tensorboard_sink.start(self.output_dir / TENSORBOARD_DIR, self.start_step)

        # The bar and the ETA clock start after the W&B set-up (about a second), as close to the
        # first step as this object gets.
        self._start_time = time.perf_counter()
        use_bar = progress == "bar" or (progress == "auto" and _isatty(sys.stdout))
        if use_bar:
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

    @property
    def wandb_mode(self) -> str:
        """The W&B mode actually in use after resolution and fallback: online, offline or disabled."""
        return self.wandb_sink.mode

    @property
    def wandb_run_dir(self) -> str | None:
        """The W&B run's directory (its offline segment, to sync), None without W&B."""
        return self.wandb_sink.run_dir

    def log_train(self, record: dict) -> None:
        """Append ``record`` to metrics.jsonl, update the progress display, log to W&B."""
        if not self.is_main or self._finished:
            return
        self._metrics_file.write(encode_record(record) + "\n")
        self._metrics_file.flush()

        step = record.get("step")
        int_step = int(step) if as_number(step) is not None else self._last_step
        if self._bar is not None:
            if int_step > self._bar.n:
                self._bar.update(int_step - self._bar.n)
            self._bar.set_postfix_str(
                f"ep {_format_epoch(record.get('epoch'))} loss {_format_number(record.get('loss'), '.4f')} "
                f"lr {_format_number(record.get('lr'), '.1e')} "
                f"img/s {_format_number(record.get('images_per_sec'), '.0f')}",
                refresh=True,
            )
        else:
            print(self._train_line(record, int_step), flush=True)
        self._last_step = int_step
        self.last_train = record

        scalars = {f"train/{key}": value for key, value in record.items() if key != "step"}
        self.wandb_sink.log(scalars, step)
        self.tensorboard_sink.log(scalars, step)

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
        """Append ``record`` to eval.jsonl, print a one-line summary, log to W&B under ``eval/``."""
        if not self.is_main or self._finished:
            return
        self._eval_file.write(encode_record(record) + "\n")
        self._eval_file.flush()
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
        scalars = {f"eval/{key}": value for key, value in record.items() if key != "step"}
        self.wandb_sink.log(scalars, record.get("step"))
        self.tensorboard_sink.log(scalars, record.get("step"))
        if self._track_eval(record):
            self.wandb_sink.summarize(self._best_summary())

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
        """The W&B summary keys of the best evaluation ({} before the first)."""
        best = self.best_eval
        if best is None:
            return {}
        return {
            "best/eval_top1": best.get("top1"),
            "best/eval_top5": best.get("top5"),
            "best/step": best.get("step"),
        }

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
        """Write eval.json and curves.png, close the bar and the W&B run (prints how to sync)."""
        if not self.is_main or self._finished:
            return
        self._finished = True
        self._metrics_file.close()
        self._eval_file.close()
        self.tensorboard_sink.finish()
        if final_eval is not None:
            write_json(self.output_dir / FINAL_EVAL_FILE, final_eval, indent=2, default=json_default)
        self._write_summary(final_eval)
        self.wandb_sink.summarize(self._best_summary())
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        try:
            png = plot_curves(self.output_dir, epoch_axis=self.epoch_axis)
            self.info(f"curves: {png}")
        except Exception as e:  # a plotting problem must not cost the end of a long run
            self.info(f"warning: could not draw curves ({type(e).__name__}: {e})")
        self.wandb_sink.finish()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.finish(None)
