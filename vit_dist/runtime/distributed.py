"""Process-group start-up and the few collectives the trainer uses.

Initialisation goes through accelerate's ``PartialState`` so that everything `accelerate
launch` (and torchrun / SLURM wrappers around it) sets in the environment is honoured; a plain
``python -m vit_dist.train`` is a single process without a process group. gloo on CPU, NCCL on
GPU. Everything else (DDP/FSDP wrapping, precision, data splitting) is ours, not accelerate's:
we never call ``accelerator.prepare`` (it would re-shard our loader).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.options import env_flag


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(timeout_minutes: float = 30.0, need_group: bool = False) -> DistEnv:
    """Join the process group the launcher described (if any) and pick this rank's device.

    ``need_group``: a single process still gets a process group of one (FSDP needs one), so
    that e.g. a sharded run can be resumed or debugged in one process."""
    from accelerate import PartialState  # heavy; only a command that trains or evaluates needs it

    use_cpu = not torch.cuda.is_available() or env_flag("ACCELERATE_USE_CPU")
    state = PartialState(cpu=use_cpu, timeout=datetime.timedelta(minutes=timeout_minutes))
    if state.num_processes > 1 and not dist.is_initialized():
        raise RuntimeError("launcher reported several processes but no process group was formed")
    device = torch.device("cpu") if use_cpu else state.device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if need_group and not dist.is_initialized():
        dist.init_process_group(
            backend="gloo" if device.type == "cpu" else "nccl",
            store=dist.HashStore(),
            rank=0,
            world_size=1,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistEnv(
        rank=state.process_index,
        world_size=state.num_processes,
        local_rank=state.local_process_index,
        device=device,
        backend=dist.get_backend() if dist.is_initialized() else None,
    )


def all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    """In-place all-reduce (sum by default) when a process group exists; identity otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def sum_over_ranks(values, device: torch.device | str = "cpu") -> torch.Tensor:
    """The sum over ranks of ``values`` as a new tensor: a tensor (on its own device), or numbers
    summed in float64 on ``device`` (the backend's device: NCCL reduces CUDA tensors only).
    Without a process group, the values themselves. Every rank must call it."""
    if isinstance(values, torch.Tensor):
        t = values.clone()
    else:
        t = torch.tensor(values, dtype=torch.float64, device=device)
    return all_reduce(t)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's object, in rank order (a one-element list without a process group)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
