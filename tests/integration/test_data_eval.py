"""Exactly-once evaluation across 2 real processes (gloo) on an odd number of samples."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vit_dist.core.config import DataSection
from vit_dist.data import DataConfig, ShardLoader
from vit_dist.runtime.distributed import sum_over_ranks
from vit_dist.training.exact_eval import EvalSums

SIZES = [60, 60, 60, 60, 60, 57]  # 357 samples: odd, and not a multiple of any batch below


def _eval(shards: str, rank: int, world: int, workers: int):
    cfg = DataConfig(
        shards, data=DataSection(img_size=16, workers=workers), split="val", training=False, batch_size=32
    )
    loader = ShardLoader(cfg, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Linear(3 * 16 * 16, 10)  # a fixed deterministic "model", same weights on every rank
    sums, keys, batches = EvalSums(), [], 0
    with torch.no_grad():
        for b in loader:
            if world > 1:  # a collective per batch, like FSDP's all-gather: would hang on uneven batch counts
                dist.all_reduce(torch.zeros(1))
            sums.update(model(b["image"].flatten(1)), b["label"], b["valid"])
            keys += [k for k, v in zip(b["key"], b["valid"].tolist()) if v]
            batches += 1
    return sums, keys, batches, loader


def _rank_main(rank: int, world: int, port: int, shards: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sums, keys, batches, loader = _eval(shards, rank, world, workers=2)
        result = sums.reduce()
        all_keys = [None] * world
        dist.all_gather_object(all_keys, keys)
        bad, seen = map(int, sum_over_ranks([loader.bad_samples, loader.samples_seen]).tolist())
        if rank == 0:
            with open(out, "w") as f:
                json.dump(
                    {"result": result, "keys": all_keys, "batches": batches, "bad": bad, "seen": seen}, f
                )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiproc
@pytest.mark.timeout(180)
def test_two_process_evaluation_equals_single_process(make_data_shards, tmp_path):
    shards = str(make_data_shards(SIZES, split="val"))
    out = tmp_path / "rank0.json"
    mp.spawn(_rank_main, args=(2, _free_port(), shards, str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())

    sums, keys, _, _ = _eval(shards, rank=0, world=1, workers=0)
    expected = sums.reduce()
    assert expected["count"] == 357 and len(set(keys)) == 357
    flat = [k for rank_keys in got["keys"] for k in rank_keys]
    assert sorted(flat) == sorted(keys)  # every sample exactly once: no padding duplicates, no drops
    assert got["result"]["count"] == 357
    assert got["result"]["top1"] == expected["top1"] and got["result"]["top5"] == expected["top5"]
    assert got["result"]["loss"] == pytest.approx(expected["loss"], rel=1e-6)  # float32 sums, other order
    assert (got["bad"], got["seen"]) == (0, 357)
