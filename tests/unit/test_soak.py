"""Fault soak: a 2-process job (DDP, then FSDP) is SIGKILLed again and again -- at random steps,
on either rank, in the middle of checkpoint saves, and with its loader worker mid-shard -- and
resumed with ``resume=auto`` after each kill. It must end exactly where an uninterrupted run
ends: the same per-step losses and evaluation, and ``metrics.jsonl`` holding every step once.

The kills are the trainer's own fault hooks (``VIT_DIST_FAULT``): a real ``SIGKILL`` that the
process sends itself at a chosen point, so nothing is cleaned up, as with ``kill -9``. The
schedule is random but seeded, so a failure replays.
"""

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


def test_the_schedule_makes_progress_and_hits_saves():
    for seed in range(20):
        plan = kill_schedule(seed)
        checkpoints = [c for _, c in plan]
        assert len(plan) == KILLS and checkpoints == sorted(checkpoints) and len(set(checkpoints)) == KILLS
        assert sum(f.startswith("kill_in_save@") for f, _ in plan) >= 3
