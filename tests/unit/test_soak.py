"""The fault soak's kill schedule (seeded, random, hitting saves, one preemption); the soak itself, a 2-process
job killed ten times and resumed, is tests/integration/test_soak.py."""

from __future__ import annotations

from support.soak import KILLS, kill_schedule


def test_the_schedule_makes_progress_and_hits_saves():
    for seed in range(20):
        plan = kill_schedule(seed)
        checkpoints = [c for _, c in plan]
        assert len(plan) == KILLS and checkpoints == sorted(checkpoints) and len(set(checkpoints)) == KILLS
        assert sum(f.startswith("kill_in_save@") for f, _ in plan) >= 3
        assert sum(f.startswith("sigusr1@") for f, _ in plan) == 1
