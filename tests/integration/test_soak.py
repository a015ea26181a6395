"""Fault soak: a 2-process job (DDP, then FSDP) is SIGKILLed again and again -- at random steps,
on either rank, in the middle of checkpoint saves, and with its loader worker mid-shard -- and
preempted once (SIGUSR1 to one rank: it saves where it is and exits), and resumed with
``resume=auto`` after each. It must end exactly where an uninterrupted run ends: the same
per-step losses and evaluation, and ``metrics.jsonl`` holding every step once.

Each soak also runs one of the other optimizers and schedules, so that they are shown to resume
exactly across processes: DDP with SGD (Nesterov), a step schedule and ``warmup_lr``; FSDP with
LAMB (its state sharded by FSDP), a linear schedule and a cooldown. AdamW and cosine, the
defaults, are every other test's.

The kills are the trainer's own fault hooks (``VIT_DIST_FAULT``): a real ``SIGKILL`` that the
process sends itself at a chosen point, so nothing is cleaned up, as with ``kill -9``. The
schedule is random but seeded, so a failure replays.
"""

from __future__ import annotations

import json
import re

import pytest
from helpers import assert_ok, read_jsonl, run_train
from resume_helpers import assert_same_run, resume_args
from support.soak import EVERY, STEPS, kill_schedule

OPTIMIZERS = {
    "ddp": [
        "optim.name=sgd",
        "optim.lr=0.05",
        "optim.schedule=step",
        "optim.decay_steps=10",
        "optim.warmup_steps=4",
        "optim.warmup_lr=0.005",
    ],
    "fsdp": ["optim.name=lamb", "optim.schedule=linear", "optim.warmup_steps=4", "optim.cooldown_steps=8"],
}


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ten_kills_then_the_same_run(digits_data_dir, tmp_path, strategy):
    extra = [f"parallel.strategy={strategy}", *OPTIMIZERS[strategy]]
    ref = tmp_path / "ref"
    assert_ok(run_train(resume_args(digits_data_dir, ref, steps=STEPS, every=EVERY, extra=extra), nproc=2))

    out, preempted = tmp_path / "soaked", False
    for i, (fault, checkpoint) in enumerate(kill_schedule(seed=1 if strategy == "ddp" else 2)):
        resume = ["resume=auto"] if i else []
        proc = run_train(
            resume_args(digits_data_dir, out, steps=STEPS, every=EVERY, extra=[*extra, *resume]),
            nproc=2,
            VIT_DIST_FAULT=fault,
        )
        assert proc.returncode != 0, f"{fault}: the job was not killed\n{proc.stdout[-2000:]}"
        latest = max(
            int(p.name[len("step-") :])
            for p in (out / "checkpoints").iterdir()
            if re.fullmatch(r"step-\d+", p.name) and (p / "meta.json").is_file()
        )
        assert latest >= checkpoint, (fault, latest, checkpoint)
        if preempted:  # the preemption's marker was cleared by the run that resumed from it
            assert not (out / "preempted.json").exists()
        preempted = fault.startswith("sigusr1@")
        if preempted:
            marker = json.loads((out / "preempted.json").read_text())
            assert marker["step"] == checkpoint and marker["checkpoint"].endswith(f"step-{checkpoint:08d}")
            assert f"preempted: preemption signal: checkpoint saved at step {checkpoint}" in proc.stderr
    assert_ok(
        run_train(
            resume_args(digits_data_dir, out, steps=STEPS, every=EVERY, extra=[*extra, "resume=auto"]),
            nproc=2,
        )
    )

    steps = [m["step"] for m in read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))  # every step exactly once, in order
    assert_same_run(ref, out)
    lrs = {m["step"]: m["lr"] for m in read_jsonl(out / "metrics.jsonl")}
    assert lrs == {m["step"]: m["lr"] for m in read_jsonl(ref / "metrics.jsonl")}  # the schedule resumed too
    if strategy == "fsdp":
        # The cooldown: the last 8 steps at min_lr, after the linear decay. A step's logged lr is
        # the one the next step uses (logged after the scheduler's step): so from step 32 on.
        assert [s for s in lrs if lrs[s] == lrs[STEPS]] == list(range(STEPS - 8, STEPS + 1))
        assert lrs[STEPS - 9] > lrs[STEPS]
