"""The run's JSONL record files: their names, how a record is encoded, read back and cut back,
and ``JsonlSink``, the metric sink that writes metrics.jsonl and eval.jsonl.

A record is one JSON object per line. Lines are compact and self-contained so a file can be
tailed while the run goes and a crash loses at most the line being written; reading skips such
a torn line. A resumed run cuts the files back to its checkpoint's step, so the lines of the
interrupted process after that step are not duplicated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..core.atomic import write_text

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
RESUMES_FILE = "resumes.jsonl"  # one record per resumed process: the step it resumed at


def json_default(obj: Any) -> Any:
    """JSON form of what ``json`` cannot encode itself: records may carry 0-d tensors or numpy
    scalars straight from the training loop."""
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, (Path, torch.dtype, torch.device)):
        return str(obj)
    return repr(obj)


def encode_record(record: dict) -> str:
    """One compact JSON line (without the newline)."""
    return json.dumps(record, default=json_default, separators=(",", ":"))


def as_number(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL file; a torn last line (a crash mid-write) is skipped."""
    records: list[dict] = []
    try:
        with open(path, encoding="utf-8") as file:
            for line in file:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    except FileNotFoundError:
        pass
    return records


def truncate_jsonl(path: Path, start_step: int) -> None:
    """Keep the records with ``step <= start_step`` (all dropped when ``start_step == 0``).

    A resumed run restarts from the checkpoint at ``start_step``; the lines logged after that
    checkpoint by the interrupted process are superseded and would otherwise be duplicated.
    The file is replaced atomically: a crash leaves either the old or the new file.
    """
    if not path.exists():
        return
    if start_step <= 0:
        kept: list[dict] = []
    else:
        kept = [
            record
            for record in read_jsonl(path)
            if not (isinstance(record.get("step"), (int, float)) and record["step"] > start_step)
        ]
    write_text(path, "".join(encode_record(record) + "\n" for record in kept))


class JsonlSink:
    """metrics.jsonl and eval.jsonl of one run logger: one line per train record and per
    evaluation, the record as given.

    Opening cuts both files back to ``start_step`` (``0``, a fresh run, empties them). They stay
    open for the whole run (closed in ``finish``) and are flushed per record, so they can be
    tailed while the run is going and a crash loses at most one line.
    """

    def __init__(self, output_dir: Path, start_step: int = 0) -> None:
        self.metrics_path = output_dir / METRICS_FILE
        self.eval_path = output_dir / EVAL_FILE
        for path in (self.metrics_path, self.eval_path):
            truncate_jsonl(path, start_step)
        self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self._eval_file = open(self.eval_path, "a", encoding="utf-8")  # noqa: SIM115

    def log_train(self, step: int | None, record: dict) -> None:
        self._metrics_file.write(encode_record(record) + "\n")
        self._metrics_file.flush()

    def log_eval(self, step: int | None, record: dict) -> None:
        self._eval_file.write(encode_record(record) + "\n")
        self._eval_file.flush()

    def summarize(self, summary: dict) -> None:
        """Nothing: the best evaluation is a line of eval.jsonl already (summary.json is the logger's)."""

    def finish(self) -> None:
        self._metrics_file.close()
        self._eval_file.close()
