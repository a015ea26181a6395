"""The run's JSONL record files: their names, how a record is encoded, read back and cut back.

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

from ..atomic import write_text

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
