"""What tests/unit/test_data_index.py and tests/integration/test_data_index.py share."""

from __future__ import annotations

from vit_dist.core.config import DataSection


def _data(**kw) -> DataSection:
    """The ``data`` section these tests load with: 16px images, and ``kw``."""
    return DataSection(img_size=16, **kw)


def _streams(loader, epoch=0):
    """Every stream of ``loader``'s rank, iterated in this process: -> batches per stream."""
    ds = loader.dataset
    ds.epoch, ds.history = epoch, ()
    out = []
    for w in range(ds.num_streams):
        ds.skip_batches, ds.worker_offset = [0] * ds.num_streams, w
        out.append(list(ds))
    return out


def _valid(batches):
    return [k for b in batches for k, v in zip(b["key"], b["valid"].tolist()) if v]
