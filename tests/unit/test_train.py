"""The trainer end to end on real digits: one process, and 2 processes (DDP, FSDP) via accelerate."""

from __future__ import annotations

import torch
from helpers import CONFIG, read_jsonl
from support.train import TINY


def test_gradient_accumulation_equals_larger_batch(digits_data_dir, tmp_path):
    from vit_dist.core.config import load_config
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    env = init_distributed()
    params = {}
    for bs, accum in ((32, 1), (16, 2)):
        cfg = load_config(
            CONFIG,
            [
                f"data.train={digits_data_dir}",
                f"data.val={digits_data_dir}",  # a fresh clone has no data/digits
                "train.steps=1",
                f"train.batch_size={bs}",
                f"train.grad_accum={accum}",
                "data.workers=0",
                "data.shuffle_buffer=0",
                "model.drop_path_rate=0.0",
                "optim.warmup_steps=0",
                "logging.wandb=false",
                f"output_dir={tmp_path / str(bs)}",
                "model.embed_dim=32",
                "model.depth=2",
                "model.num_heads=2",
            ],
        )
        trainer = Trainer(cfg, env)
        trainer.train_loader.set_epoch(0)
        trainer.train_step(iter(trainer.train_loader))
        params[bs] = {n: p.detach().clone() for n, p in trainer.plain_model.named_parameters()}
    changed = 0
    for n, p in params[32].items():
        torch.testing.assert_close(params[16][n], p, atol=2e-6, rtol=1e-5)
        changed += 1
    assert changed > 10


def test_a_run_that_waits_for_data_is_told_so_once(digits_data_dir, tmp_path, monkeypatch, caplog):
    import logging
    import time

    from vit_dist.core.config import load_config
    from vit_dist.data.pipeline import ShardLoader
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    slow_iter = ShardLoader.__iter__

    def slow(self):  # storage that delivers a batch every 200 ms, far slower than this tiny model
        for batch in slow_iter(self):
            time.sleep(0.2)
            yield batch

    monkeypatch.setattr(ShardLoader, "__iter__", slow)
    cfg = load_config(
        CONFIG,
        [
            f"data.train={digits_data_dir}",
            "data.val=null",
            "data.workers=0",
            "train.steps=8",
            "logging.every=1",
            "logging.wandb=false",
            f"output_dir={tmp_path}",
            *TINY[:-1],
        ],
    )
    with caplog.at_level(logging.WARNING, logger="vit_dist.training.trainer"):
        Trainer(cfg, init_distributed()).fit()
    advice = [r.getMessage() for r in caplog.records if "input-bound" in r.getMessage()]
    assert len(advice) == 1, advice  # windows 2-4 were slow: said at step 4, not again
    assert "data.workers=0 per rank" in advice[0]
    waits = [m["data_wait_frac"] for m in read_jsonl(tmp_path / "metrics.jsonl")]
    assert len(waits) == 8 and min(waits[1:]) > 0.2, waits


def test_a_run_that_is_all_warmup_is_told_so_once(make_data_shards, tmp_path, caplog):
    """train.steps=3 with the digits config's warmup (epochs): the lr would only rise; a warmup
    shorter than the run says nothing."""
    import logging

    from vit_dist.core.config import load_config
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    data = make_data_shards([40])
    base = [f"data.train={data}", "data.val=null", "data.workers=0", "logging.wandb=false", *TINY[:-1]]
    caplog.set_level(logging.WARNING, logger="vit_dist.training.trainer")
    Trainer(load_config(CONFIG, [*base, "train.steps=3", f"output_dir={tmp_path / 'a'}"]), init_distributed())
    said = [r.getMessage() for r in caplog.records if "is at least the whole run" in r.getMessage()]
    assert len(said) == 1 and "(3 steps)" in said[0] and "optim.warmup_epochs" in said[0], said
    caplog.clear()
    short = ["train.steps=3", "optim.warmup_steps=1", f"output_dir={tmp_path / 'b'}"]
    Trainer(load_config(CONFIG, [*base, *short]), init_distributed())
    assert not [r for r in caplog.records if "whole run" in r.getMessage()]


def test_the_logged_mfu_never_exceeds_1(make_data_shards, tmp_path, monkeypatch):
    """The start-up peak absurdly low (as a peak measured on a loaded machine is, only more so):
    every logged MFU is still at most 1, because the first one above 1 raises the peak."""
    from vit_dist.core.config import load_config
    from vit_dist.metrics import hardware
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training import trainer as trainer_module
    from vit_dist.training.trainer import Trainer

    monkeypatch.setattr(hardware, "_MEASURED_PEAKS", {})
    monkeypatch.setattr(trainer_module, "peak_flops", lambda *a: 1.0)  # 1 FLOP/s
    data = make_data_shards([40])
    base = [f"data.train={data}", "data.val=null", "data.workers=0", "logging.wandb=false", *TINY[:-1]]
    run = [*base, "train.steps=4", "logging.every=1", f"output_dir={tmp_path / 'r'}"]
    Trainer(load_config(CONFIG, run), init_distributed()).fit()
    logged = [m["mfu"] for m in read_jsonl(tmp_path / "r" / "metrics.jsonl")]
    assert len(logged) == 4 and all(0 < v <= 1.0 for v in logged), logged
