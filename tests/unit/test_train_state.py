"""The training state as components (vit_dist/checkpoint/state.py, and the state_dicts of the loss
scaler, EMA and lr schedule): each restores exactly what it saved, through a real checkpoint;
what a resume reconciles (another peak lr, run length, world size, precision) does what the
trainer's resume relies on. The whole resume is tests/integration/test_resume.py's."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from vit_dist.checkpoint import store as ck
from vit_dist.checkpoint.state import JobDataCounts, RngState, TrainState, load_components, state_dicts
from vit_dist.core.errors import CheckpointError
from vit_dist.runtime.distributed import DistEnv
from vit_dist.runtime.precision import LossScaler
from vit_dist.training.ema import ModelEma
from vit_dist.training.optim import LrSchedule, RunLength, Schedule

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
CPU = torch.device("cpu")


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    p = nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [p], "lr": lr, "lr_scale": 1.0}], lr=lr)


def _lr_schedule(
    lr: float = 1.0, *, steps_per_epoch: int = 10, epochs: int = 10, optimizer=None
) -> LrSchedule:
    length = RunLength(steps_per_epoch * epochs, steps_per_epoch, in_steps=False, epochs=epochs)
    return LrSchedule(optimizer or _optimizer(lr), Schedule(length.planned_steps, 10, 0.0), lr, length)


def _run(schedule: LrSchedule, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(schedule.optimizer.param_groups[0]["lr"])
        schedule.optimizer.step()
        schedule.step()
    return lrs


def test_the_components_come_back_through_a_checkpoint(tmp_path):
    model = nn.Linear(4, 2)
    optim = torch.optim.AdamW(model.parameters(), lr=1.0)
    train = TrainState(step=7, epoch=1, step_in_epoch=2, samples_seen=224, best_top1=0.5)
    train.skipped_steps += 3
    scaler = LossScaler(CPU, enabled=True)
    scaler.update(torch.tensor(1.0))  # an overflow: the scale halves
    ema = ModelEma(model, 0.99)
    ema.update(model)
    lr = _lr_schedule(optimizer=optim)
    _run(lr, 7)
    state = {"train": train, "scaler": scaler, "ema": ema, "schedule": lr}
    saved = state_dicts(state)
    path = ck.save_checkpoint(
        tmp_path,
        ENV,
        step=7,
        tensors=ck.TensorState(model=model, optimizer=optim, ema=ema.params, fsdp=False),
        meta={"run_id": "run-a"},
        state=state,
        rank_state={"rng": RngState()},
        keep=1,
    )
    again = nn.Linear(4, 2)
    again_optim = torch.optim.AdamW(again.parameters(), lr=1.0)
    fresh = {
        "train": TrainState(),
        "scaler": LossScaler(CPU, enabled=True),
        "ema": ModelEma(again, 0.99),
        "schedule": _lr_schedule(optimizer=again_optim),
    }
    meta, rank_state = ck.load_checkpoint(
        path, ENV, ck.TensorState(model=again, optimizer=again_optim, ema=fresh["ema"].params, fsdp=False)
    )
    load_components(fresh, meta["state"], path)
    assert state_dicts(fresh) == saved
    assert fresh["train"].skipped_steps.item() == 3 and fresh["ema"].updates == 1
    assert _run(fresh["schedule"], 5) == _run(lr, 5)  # the lr goes on as it would have
    assert set(rank_state) == {"rng"}
    assert all(torch.equal(fresh["ema"].params[n], ema.params[n]) for n in ema.names)


def test_a_component_the_checkpoint_lacks_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no 'ema' state"):
        load_components({"ema": ModelEma(nn.Linear(2, 2), 0.9)}, {"train": {}}, tmp_path)


def test_rng_state_resumes_every_generator(tmp_path):
    rng = RngState()
    torch.save(rng.state_dict(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    rng.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))  # as a rank file loads
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_the_loss_scale_is_restored_only_between_fp16_runs():
    fp16 = LossScaler(CPU, enabled=True)
    fp16.update(torch.tensor(1.0))
    bf16 = LossScaler(CPU, enabled=False)
    resumed = LossScaler(CPU, enabled=True)
    resumed.load_state_dict(bf16.state_dict())  # from a bf16 run: its own initial scale
    assert resumed.scale.item() == 2.0**16
    resumed.load_state_dict(fp16.state_dict())
    assert resumed.scale.item() == 2.0**15
    off = LossScaler(CPU, enabled=False)
    off.load_state_dict(fp16.state_dict())  # an fp16 checkpoint resumed in bf16: no scaling
    assert off.scale.item() == 1.0


def test_a_new_peak_lr_scales_the_restored_schedule():
    saved = _lr_schedule(1.0)
    _run(saved, 20)
    resumed = _lr_schedule(0.5)
    resumed.optimizer.load_state_dict(saved.optimizer.state_dict())  # the checkpoint's lrs
    resumed.load_state_dict(saved.state_dict())
    assert resumed.peak_lr == 1.0
    assert resumed.set_peak(0.5) == 1.0 and resumed.set_peak(0.5) is None
    assert _run(resumed, 5) == pytest.approx([0.5 * x for x in _run(saved, 5)])


def test_the_restored_schedule_is_fitted_to_this_runs_length():
    saved = _lr_schedule(steps_per_epoch=10, epochs=10)
    _run(saved, 30)
    state = saved.state_dict()

    same = _lr_schedule(steps_per_epoch=10, epochs=10)
    length = same.length
    same.load_state_dict(state)
    assert same.fit_length(length, step=30, steps_left=lambda: 70) is None
    assert same.schedule == saved.schedule

    # Twice the steps per epoch (half the world size): the epochs hold, the lr goes on from 30%.
    wider = _lr_schedule(steps_per_epoch=20, epochs=10)
    length = wider.length
    wider.load_state_dict(state)
    warning = wider.fit_length(length, step=30, steps_left=lambda: 140)
    assert "steps per epoch changed (10 -> 20)" in warning and "from 30.0%" in warning
    assert wider.schedule.last_step == 170 and wider.length == length
    assert wider.schedule(30) == pytest.approx(saved.schedule(30))

    # Another train.epochs: the schedule of the new length, as configured.
    longer = _lr_schedule(steps_per_epoch=10, epochs=20)
    length = longer.length
    longer.load_state_dict(state)
    warning = longer.fit_length(length, step=30, steps_left=lambda: 170)
    assert "train.steps/train.epochs changed (100 -> 200 steps)" in warning
    assert longer.schedule == Schedule(200, 10, 0.0) and longer.schedule.last_step == 200
    assert math.isclose(longer.scheduler.lr_lambdas[0](30), Schedule(200, 10, 0.0)(30))


def test_an_extended_all_warmup_run_goes_on_from_the_peak_instead_of_warming_up_again():
    # train.steps=30 with 180 warmup steps asked for: all warmup, ending at the peak lr.
    def short(steps: int) -> LrSchedule:
        length = RunLength(steps, 90, in_steps=True)
        return LrSchedule(_optimizer(), Schedule(steps, min(180, steps), 0.0), 1.0, length)

    saved = short(30)
    lrs = _run(saved, 30)
    assert lrs[-1] == pytest.approx(1.0) and lrs[0] == pytest.approx(1 / 30)
    longer = short(40)  # extended to train.steps=40: configured warmup min(180, 40) = 40
    length = longer.length
    longer.load_state_dict(saved.state_dict())
    warning = longer.fit_length(length, step=30, steps_left=lambda: 10)
    assert "(30 -> 40 steps)" in warning and "past its warmup (30 steps, already done)" in warning
    after = [longer.schedule(s) for s in range(30, 41)]
    assert after[0] == pytest.approx(1.0) and after[-1] == pytest.approx(0.0)  # decays from the peak
    assert all(a >= b for a, b in zip(after, after[1:]))

    # Killed in the middle of its warmup, the extension keeps warming up to its own length.
    mid = short(40)
    length = mid.length
    mid.load_state_dict(short(30).state_dict())
    assert "past its warmup" not in mid.fit_length(length, step=12, steps_left=lambda: 28)
    assert mid.schedule.warmup == 40


@pytest.mark.parametrize("is_main", [True, False])
def test_on_another_world_size_rank_0_carries_the_jobs_bad_sample_counts(is_main):
    loader = SimpleNamespace(bad_samples=2, samples_seen=50)
    counts = JobDataCounts(loader, CPU, is_main)  # stands in for a ShardLoader
    assert counts.state_dict() == {"bad_samples": 2, "samples_seen": 50}  # one process: its own
    counts.load_state_dict({"bad_samples": 9, "samples_seen": 400})
    assert (loader.bad_samples, loader.samples_seen) == ((9, 400) if is_main else (0, 0))
