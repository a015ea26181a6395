"""What tests/unit/test_export_predict.py and tests/integration/test_export_predict.py share."""

from __future__ import annotations

import torch


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)
