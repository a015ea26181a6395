"""What tests/unit/test_data_pipeline.py and tests/integration/test_data_pipeline.py share."""

from __future__ import annotations

import dataclasses

from vit_dist.core.config import DataSection
from vit_dist.data import DataConfig

# The data section's keys that _cfg takes as keywords (``training`` is DataConfig's own).
_SECTION = {f.name for f in dataclasses.fields(DataSection)} - {
    f.name for f in dataclasses.fields(DataConfig)
}


UNEVEN = [37, 5, 20, 13, 29, 1, 18]  # 123 samples, deliberately uneven shards


def _cfg(shards, **kw):
    """A loader's settings: 16px images, and ``kw`` as the ``data`` section's keys (workers,
    mode, shuffle_buffer, ...) or DataConfig's own fields (batch_size, seed, ...)."""
    kw.setdefault("batch_size", 8)
    kw.setdefault("workers", 2)
    kw.setdefault("shuffle_buffer", 16)
    data = {k: kw.pop(k) for k in list(kw) if k in _SECTION}
    return DataConfig(str(shards), data=DataSection(img_size=16, **data), **kw)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def _valid_keys(batches):
    return [k for b in batches for k, v in zip(b["key"], b["valid"].tolist()) if v]


def _corrupt(shard, i, files):
    if (shard, i) == (0, 1):
        return {"jpg": b"\xff\xd8\xff\xe0 not really a jpeg", "cls": files["cls"]}  # corrupt image
    if (shard, i) == (0, 2):
        return {"jpg": files["jpg"][: len(files["jpg"]) // 3], "cls": files["cls"]}  # truncated image
    if (shard, i) == (1, 0):
        return {"jpg": files["jpg"]}  # missing label
    if (shard, i) == (2, 3):
        return {"jpg": files["jpg"], "cls": b"42"}  # out of range label
    return files
