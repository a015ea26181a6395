"""What tests/unit/test_metrics.py and tests/integration/test_metrics.py share."""

from __future__ import annotations

import json
from pathlib import Path

from metrics_helpers import eval_record, make_logger, train_record, wandb_sandbox  # noqa: F401  (autouse)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
