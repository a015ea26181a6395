"""Preemption notices (SIGUSR1 from SLURM's ``--signal``, SIGTERM from a scheduler or a user):
recorded by ``core.notices``, acted on in the training loop at the next step boundary by every
rank together.

``requested()`` is a collective: the flag is reduced (max) over a CPU (gloo) group, so all
ranks agree to stop at the same step, and agreeing on it each step costs no host-device
synchronisation, also when the training backend is NCCL.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..core import notices
from ..runtime.distributed import DistEnv

SIGNALS = notices.SIGNALS


class PreemptionWatch:
    """Acts on the notices of ``core.notices`` at step boundaries, every rank together."""

    def __init__(self, env: DistEnv):
        self._group: dist.ProcessGroup | None = None
        if dist.is_initialized() and env.world_size > 1:
            group = dist.new_group(backend="gloo") if env.backend != "gloo" else dist.group.WORLD
            if isinstance(group, int):  # GroupMember.NON_GROUP_MEMBER: never, every rank is a member
                raise RuntimeError("this rank is not a member of the preemption watch's process group")
            self._group = group

    @property
    def signal_name(self) -> str | None:
        """The preemption signal this process received."""
        return notices.received()

    def install(self) -> None:
        """Route the preemption signals to the notices (idempotent; the train command does it
        first thing)."""
        notices.listen()

    def requested(self) -> bool:
        """True on every rank when any rank received a preemption signal (a collective)."""
        flag = torch.tensor([1.0 if notices.received() else 0.0])
        if self._group is not None:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())
