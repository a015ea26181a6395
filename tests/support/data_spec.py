"""What tests/unit/test_data_spec.py and tests/integration/test_data_spec.py share."""

from __future__ import annotations

from vit_dist.data.spec import resolve_shards
from vit_dist.data.tar_reader import read_slice


def _read_every_shard(spec: str) -> list[dict]:
    """Resolve ``spec`` and read every sample of every shard, as training would."""
    shards = resolve_shards(spec)
    return [s for url in shards.urls for s in read_slice(url)]
