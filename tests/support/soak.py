"""What tests/unit/test_soak.py and tests/integration/test_soak.py share."""

from __future__ import annotations

import random

STEPS, EVERY, KILLS = 40, 3, 10


def kill_schedule(seed: int) -> list[tuple[str, int]]:
    """``KILLS`` faults (``VIT_DIST_FAULT`` value, the checkpoint step a resume starts from after
    it), each one past the checkpoint the previous one left, so every relaunch makes progress.
    At least 3 hit a save in progress; the others kill a rank between steps, where its loader
    worker is mid-shard (shards of 100 samples, 16 per batch: a step boundary is almost never
    a shard boundary)."""
    rng = random.Random(seed)
    kinds = ["kill_in_save"] * 3 + ["kill"] * (KILLS - 3)
    rng.shuffle(kinds)
    plan, last_checkpoint = [], 0
    for kind in kinds:
        rank = rng.choice([0, 1])
        if kind == "kill_in_save":
            # The save of step s dies half-written: the resume starts from the save before it.
            step = last_checkpoint + 2 * EVERY
            last_checkpoint = step - EVERY
        else:
            # Killed after step s (and after the save of s, when s is a checkpoint step).
            step = rng.randint(last_checkpoint + EVERY, last_checkpoint + 2 * EVERY - 1)
            last_checkpoint = step // EVERY * EVERY
        plan.append((f"{kind}@{step}:{rank}", last_checkpoint))
    assert plan[-1][1] < STEPS - 1, plan  # the last resume still has steps to run
    return plan
