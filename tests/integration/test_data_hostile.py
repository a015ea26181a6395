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


def test_a_worker_killed_while_decoding_names_the_sample(make_data_shards, monkeypatch):
    # A native crash (simulated: the worker sends itself SIGSEGV on one sample) ends the worker;
    # the rank's error names the sample it was on, and gives no __main__ hint (fork start).
    import os
    import signal

    from vit_dist.core.errors import DataError
    from vit_dist.data.transforms import SampleTransform

    shards = make_data_shards([20, 20])
    real = SampleTransform.uint8
    doomed = {"n": 0}

    def crash_on_the_seventh(self, data):
        doomed["n"] += 1
        if doomed["n"] == 7:
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(self, data)

    monkeypatch.setattr(SampleTransform, "uint8", crash_on_the_seventh)  # inherited by forked workers
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
    assert line.startswith("loader worker ") and " died while decoding " in line, line
    # torch reports the signal only when its SIGCHLD check sees the death first; the sample and
    # the worker's pid are named either way.
    assert f"{shards}/train-00000" in line and ".tar#s" in line and " (pid " in line, line
    assert "__main__" not in line
