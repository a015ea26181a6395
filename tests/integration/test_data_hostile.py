"""Hostile and odd images: a pixel bomb, a tar member that claims 40 GB and every image mode a
decoder returns become either 8-bit RGB with the right values or a counted bad sample; never a
crash of a batch, and never an allocation of what a header merely claims."""

from __future__ import annotations

import pytest
import torch
from support.data_hostile import (
    BAD,
    S,
    _bomb_decoded,
    _hostile_shards,
)

from vit_dist.core.config import DataSection
from vit_dist.data.pipeline import DataConfig, ShardLoader

# ---------------------------------------------------------------- the header and the pixel limit


# ---------------------------------------------------------------- image modes


# ---------------------------------------------------------------- tar members


# ---------------------------------------------------------------- the loader, end to end


# The spies are inherited by forked loader workers: there a decode of the bomb or an unbounded
# read fails the run instead of allocating gigabytes.
@pytest.mark.parametrize("workers", [0, 2])
def test_hostile_and_odd_samples_train_to_the_end_counted_as_bad(
    make_data_shards, decodes, bounded_reads, workers
):
    shards = _hostile_shards(make_data_shards)
    cfg = DataConfig(
        str(shards), data=DataSection(img_size=S, workers=workers, shuffle_buffer=8), batch_size=4
    )
    loader = ShardLoader(cfg)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader)
        assert all(b["image"].shape == (4, 3, S, S) and b["image"].dtype == torch.float32 for b in batches)
        valid = {k for b in batches for k, v in zip(b["key"], b["valid"].tolist()) if v}
        assert valid == {f"s0_{i}" for i in range(20)} - set(BAD) | {f"s1_{i}" for i in range(3)}
    assert loader.bad_samples == 10 and loader.samples_seen == 48  # 5 bad per epoch
    assert not _bomb_decoded(decodes)


# ---------------------------------------------------------------- predict


# ---------------------------------------------------------------- a worker that dies


def _crash_on(marker: bytes, monkeypatch) -> None:
    """A native crash, simulated: a loader worker sends itself SIGSEGV when it decodes an image
    whose bytes end with ``marker`` (the patch is inherited by forked workers)."""
    import os
    import signal

    from vit_dist.data.transforms import SampleTransform

    real = SampleTransform.uint8

    def crash(self, data):
        if data.endswith(marker):
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(self, data)

    monkeypatch.setattr(SampleTransform, "uint8", crash)


def test_a_sample_that_kills_its_worker_costs_one_sample_not_the_run(make_data_shards, monkeypatch, caplog):
    import logging

    marker = b"CRASH-THE-DECODER"
    shards = make_data_shards(  # trailing bytes after a JPEG's end: it still decodes, when it may
        [20, 20],
        edit=lambda s, i, files: {**files, "jpg": files["jpg"] + marker} if (s, i) == (1, 6) else files,
    )
    _crash_on(marker, monkeypatch)
    cfg = DataConfig(
        str(shards),
        data=DataSection(img_size=S, workers=2, shuffle_buffer=8),
        batch_size=4,
        worker_start_method="fork",
    )
    loader = ShardLoader(cfg)
    everything = {f"s{s}_{i}" for s in (0, 1) for i in range(20)}
    with caplog.at_level(logging.WARNING, logger="vit_dist.data"):
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader)
            keys = [k for b in batches for k, v in zip(b["key"], b["valid"].tolist()) if v]
            assert sorted(keys) == sorted(everything - {"s1_6"})  # every other sample exactly once
    assert loader.bad_samples == 2 and loader.samples_seen == 80  # the sample, once per epoch
    restarts = [r.getMessage() for r in caplog.records if "loader workers restarted" in r.getMessage()]
    assert len(restarts) == 1, restarts  # epoch 1 skips it without a crash
    assert f"died while decoding {shards}/train-000001.tar#s1_6" in restarts[0]
    assert "counted as a bad sample" in restarts[0] and "__main__" not in restarts[0]
    # A resume remembers it: the next job does not crash on it either.
    resumed = ShardLoader(cfg)
    resumed.load_state_dict(loader.state_dict())
    assert resumed.poisoned == {f"{shards}/train-000001.tar#s1_6"}


def test_a_worker_that_dies_between_samples_stops_the_run_naming_it(make_data_shards, monkeypatch):
    # Not a sample's fault (here: the worker dies before its first sample): one line naming the
    # worker, no __main__ hint under fork, no endless restarts.
    import os
    import signal

    from vit_dist.core.errors import DataError
    from vit_dist.data.pipeline import ShardStream

    shards = make_data_shards([20, 20])
    real = ShardStream._batches

    def die(self, decoded, worker):
        os.kill(os.getpid(), signal.SIGKILL)
        yield from real(self, decoded, worker)

    monkeypatch.setattr(ShardStream, "_batches", die)
    cfg = DataConfig(
        str(shards),
        data=DataSection(img_size=S, workers=2),
        training=False,
        batch_size=4,
        worker_start_method="fork",
    )
    with pytest.raises(DataError) as e:
        list(ShardLoader(cfg))
    line = str(e.value)
    assert line.startswith("loader worker ") and " died between samples " in line and " (pid " in line, line
    assert "__main__" not in line
