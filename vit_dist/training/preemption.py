"""Preemption notices (SIGUSR1 from SLURM's ``--signal``, SIGTERM from a scheduler or a user):
noted by a signal handler, acted on at the next step boundary by every rank together.

``requested()`` is a collective: the flag is reduced (max) over a CPU (gloo) group, so all
ranks agree to stop at the same step, and agreeing on it each step costs no host-device
synchronisation, also when the training backend is NCCL.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from ..runtime.distributed import DistEnv

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionWatch:
    def __init__(self, env: DistEnv):
        self.signal_name: str | None = None  # the preemption signal this process received
        self._group: dist.ProcessGroup | None = None
        if dist.is_initialized() and env.world_size > 1:
            group = dist.new_group(backend="gloo") if env.backend != "gloo" else dist.group.WORLD
            if isinstance(group, int):  # GroupMember.NON_GROUP_MEMBER: never, every rank is a member
                raise RuntimeError("this rank is not a member of the preemption watch's process group")
            self._group = group

    def install(self) -> None:
        """Route the preemption signals to this watch (from now on, in this process)."""
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def requested(self) -> bool:
        """True on every rank when any rank received a preemption signal (a collective)."""
        flag = torch.tensor([1.0 if self.signal_name else 0.0])
        if self._group is not None:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())
