"""What tests/unit/test_soak.py and tests/integration/test_soak.py share."""

from __future__ import annotations

import random

STEPS, EVERY, KILLS = 40, 3, 10


def kill_schedule(seed: int) -> list[tuple[str, int]]:
    """``KILLS`` faults (``VIT_DIST_FAULT`` value, the checkpoint step a resume starts from after
    it), each one past the checkpoint the previous one left, so every relaunch makes progress.
    At least 3 hit a save in progress; one is a preemption notice (SIGUSR1) to one rank, which
    the job answers by saving where it is and exiting; the others kill a rank between steps,
    where its loader worker is mid-shard (shards of 100 samples, 16 per batch: a step boundary
    is almost never a shard boundary)."""
    rng = random.Random(seed)
    kinds = ["kill_in_save"] * 3 + ["sigusr1"] + ["kill"] * (KILLS - 4)
    rng.shuffle(kinds)
    plan, last_checkpoint = [], 0
    for kind in kinds:
        rank = rng.choice([0, 1])
        next_save = (last_checkpoint // EVERY + 1) * EVERY  # the first cadence save after it
        if kind == "kill_in_save":
            # The save of step s dies half-written: the resume starts from the save before it.
            step = next_save + EVERY
            last_checkpoint = next_save
        elif kind == "sigusr1":
            # Preempted after step s, off the save cadence: every rank stops there together and
            # saves step s.
            step = last_checkpoint = rng.randint(last_checkpoint + 1, next_save - 1)
        else:
            # Killed after step s (and after the save of s, when s is a checkpoint step).
            step = rng.randint(next_save, next_save + EVERY - 1)
            last_checkpoint = step // EVERY * EVERY
        plan.append((f"{kind}@{step}:{rank}", last_checkpoint))
    assert plan[-1][1] < STEPS - 1, plan  # the last resume still has steps to run
    return plan
