"""Fault soak: a 2-process job (DDP, then FSDP) is SIGKILLed again and again -- at random steps,
on either rank, in the middle of checkpoint saves, and with its loader worker mid-shard -- and
resumed with ``resume=auto`` after each kill. It must end exactly where an uninterrupted run
ends: the same per-step losses and evaluation, and ``metrics.jsonl`` holding every step once.

The kills are the trainer's own fault hooks (``VIT_DIST_FAULT``): a real ``SIGKILL`` that the
process sends itself at a chosen point, so nothing is cleaned up, as with ``kill -9``. The
schedule is random but seeded, so a failure replays.
"""

from __future__ import annotations

import re

import pytest
from helpers import assert_ok, read_jsonl, run_train
from resume_helpers import assert_same_run, resume_args
from support.soak import EVERY, STEPS, kill_schedule


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ten_kills_then_the_same_run(digits_data_dir, tmp_path, strategy):
    extra = [f"parallel.strategy={strategy}"]
    ref = tmp_path / "ref"
    assert_ok(run_train(resume_args(digits_data_dir, ref, steps=STEPS, every=EVERY, extra=extra), nproc=2))

    out = tmp_path / "soaked"
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
    assert_ok(
        run_train(
            resume_args(digits_data_dir, out, steps=STEPS, every=EVERY, extra=[*extra, "resume=auto"]),
            nproc=2,
        )
    )

    steps = [m["step"] for m in read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))  # every step exactly once, in order
    assert_same_run(ref, out)
