"""DeiT distillation: the losses by hand, a frozen teacher, and 2-process DDP/FSDP runs whose
distillation head learns to agree with the teacher."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import CONFIG, assert_ok, read_jsonl, run_train

from vit_dist.core.config import load_config

TINY_STUDENT = [
    "model.name=deit_distilled",
    "model.global_pool=token",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "train.batch_size=16",
    "data.workers=1",
    "logging.wandb=false",
]


@pytest.fixture(scope="module")
def teacher_run(digits_data_dir, tmp_path_factory):
    """A small ViT trained for 150 steps on digits: the teacher of the tests below."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    args = [
        f"data.train={digits_data_dir}",
        f"data.val={digits_data_dir}",
        "train.steps=150",
        "logging.every=50",
    ]
    args += [
        "model.embed_dim=48",
        "model.depth=2",
        "model.num_heads=2",
        "train.batch_size=32",
        "logging.wandb=false",
    ]
    assert_ok(run_train([*args, f"output_dir={out}"], OMP_NUM_THREADS="2"))
    return out


def test_teacher_stays_frozen_in_training(digits_data_dir, teacher_run, tmp_path):
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    cfg = load_config(
        CONFIG,
        [
            f"data.train={digits_data_dir}",
            f"data.val={digits_data_dir}",  # a fresh clone has no data/digits
            "train.steps=3",
            "data.workers=0",
            "distill.type=soft",
            f"distill.teacher_weights={teacher_run}",
            f"output_dir={tmp_path}",
            *TINY_STUDENT,
        ],
    )
    trainer = Trainer(cfg, init_distributed())
    before = {n: p.detach().clone() for n, p in trainer.teacher.named_parameters()}
    trainer.train_loader.set_epoch(0)
    it = iter(trainer.train_loader)
    for _ in range(3):
        trainer.train_step(it)  # calls model.train() on the student each step
    assert not trainer.teacher.training and not any(m.training for m in trainer.teacher.modules())
    for n, p in trainer.teacher.named_parameters():
        assert p.grad is None and not p.requires_grad, n
        assert torch.equal(p, before[n]), n


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_distillation_two_processes_agreement_rises(digits_data_dir, teacher_run, tmp_path, strategy):
    out = tmp_path / strategy
    args = [
        f"data.train={digits_data_dir}",
        f"data.val={digits_data_dir}",
        "train.steps=150",
        "eval.every=30",
        "logging.every=50",
        "distill.type=hard",
        f"distill.teacher_weights={teacher_run}",
        f"parallel.strategy={strategy}",
        f"output_dir={out}",
        *TINY_STUDENT,
    ]
    proc = run_train(args, nproc=2)
    assert_ok(proc)
    assert "replicated on every rank" in proc.stdout
    evals = read_jsonl(out / "eval.jsonl")
    teacher_top1 = json.loads((teacher_run / "eval.json").read_text())["top1"]
    assert all(abs(e["teacher_top1"] - teacher_top1) < 1e-9 for e in evals)  # the teacher is unchanged
    assert {"cls_top1", "dist_top1", "teacher_agreement"} <= set(evals[-1])
    first, last = evals[0]["teacher_agreement"], evals[-1]["teacher_agreement"]
    # 0.24 is what a student that has learnt nothing scores (the teacher favours some digits)
    assert last > 0.4 and last > first + 0.15, [e["teacher_agreement"] for e in evals]
