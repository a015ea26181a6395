"""Preemption notices (SIGUSR1 from SLURM's ``--signal``, SIGTERM from a scheduler or a user),
recorded from the moment a command starts, so that no moment of a job is unprotected.

Two phases:

- **set-up** (``interrupting(True)``, from the claim of the run directory until the training
  loop starts: data indexing, model build, resume): a notice raises :class:`Preempted` at once,
  and the trainer writes ``preempted.json`` naming the newest checkpoint (or none) before the
  job exits 75, so a requeue script requeues. Nothing is lost: no step has been trained yet.
- **the loop**: a notice is only recorded; ``training.preemption.PreemptionWatch`` acts on it
  at the next step boundary, with every rank together (checkpoint, ``preempted.json``, 75).

Before the run directory is claimed a notice is recorded too, and acted on at the claim (the
directory may not be this job's to write into before). Torch-free: the train command installs
it before anything heavy is imported.
"""

from __future__ import annotations

import signal

from .errors import Preempted

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class _State:
    received: str | None = None  # the name of the first notice this process got
    interrupting = False


def listen() -> None:
    """Route the preemption signals here (from now on, in this process; main thread only)."""
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)


def _on_signal(signum, frame) -> None:
    _State.received = _State.received or signal.Signals(signum).name
    if _State.interrupting:
        _State.interrupting = False  # raise once; the handling code must not be interrupted again
        raise Preempted(f"preemption signal ({_State.received}) during set-up")


def received() -> str | None:
    """The notice this process got (``SIGTERM``, ``SIGUSR1``), or None."""
    return _State.received


def interrupting(on: bool) -> None:
    """Enter (True) or leave (False) the set-up phase. Entering it after a notice was already
    recorded raises :class:`Preempted` at once."""
    _State.interrupting = on
    if on and _State.received:
        _State.interrupting = False
        raise Preempted(f"preemption signal ({_State.received}) during set-up")


def forget() -> None:
    """Clear the record (a new run in the same process: the tests)."""
    _State.received, _State.interrupting = None, False
