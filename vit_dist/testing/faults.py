"""Test-only fault injection for the never-lose-a-run guarantees (off unless VIT_DIST_FAULT is set).

``VIT_DIST_FAULT`` holds comma-separated ``kind@step[:rank]`` entries (rank defaults to 0):

    nan@5            the loss of step 5 on rank 0 becomes NaN (the other ranks stay finite)
    kill@12          rank 0 SIGKILLs itself right after step 12 (a hard crash, no clean-up)
    kill_in_save@10  rank 0 SIGKILLs itself in the middle of writing the step-10 checkpoint
    sigusr1@7:1      rank 1 sends itself SIGUSR1 after step 7 (a preemption notice)
    kill_node@12:1   rank 1 SIGKILLs its launcher agent (its parent: torchrun), then itself,
                     right after step 12: the node is lost, as when a machine goes down

Real signals and real kills go through the same code paths as in production; only the moment
is chosen by the test.
"""

from __future__ import annotations

import os
import signal

_ENV = "VIT_DIST_FAULT"


def _parse(text: str) -> set[tuple[str, int, int]]:
    out = set()
    for item in filter(None, (s.strip() for s in text.split(","))):
        kind, _, where = item.partition("@")
        step, _, rank = where.partition(":")
        out.add((kind, int(step), int(rank or 0)))
    return out


_FAULTS = _parse(os.environ.get(_ENV, ""))


def armed(kind: str, step: int, rank: int) -> bool:
    return (kind, step, rank) in _FAULTS


def maybe_kill(kind: str, step: int, rank: int) -> None:
    if armed(kind, step, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_kill_node(step: int, rank: int) -> None:
    if armed("kill_node", step, rank):
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_signal(step: int, rank: int) -> None:
    for name in ("sigusr1", "sigterm"):
        if armed(name, step, rank):
            os.kill(os.getpid(), getattr(signal, name.upper()))
