"""What tests/unit/test_train.py and tests/integration/test_train.py share."""

from __future__ import annotations

TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "train.batch_size=16", "data.workers=1"]
