"""The training state as named components: what a checkpoint saves and a resume restores.

A component is anything with ``state_dict()`` / ``load_state_dict()`` (:class:`Stateful`). The
trainer names its components in three mappings; ``checkpoint.save_checkpoint`` writes them and
the trainer's resume loads them back, one loop each, so that a new piece of state is one line:

- the run's (meta.json ``state``, written by rank 0, restored on every resume): the counters
  (:class:`TrainState`), the lr schedule (``optim.LrSchedule``), the loss scaler, the EMA's
  update count;
- each rank's own (``rank-NNNNN.pt``, restored when the world size is the one saved): the data
  loader's position and bad-sample counts, the RNG states (:class:`RngState`);
- the job's stand-ins for those (meta.json ``state`` too, restored in their place on another
  world size, where per-rank states mean nothing): rank 0's data position, which the loader
  re-plans the rest of the epoch from (:class:`JobDataPosition`), and the bad-sample counts
  of all ranks together (:class:`JobDataCounts`).

The run's states are JSON (they go into meta.json); a rank's may hold tensors (``torch.save``,
loaded with ``weights_only=True``). The model, optimizer and EMA weights are no components:
they are tensors that ``store.py`` saves as a whole (``state.pt``) or, under FSDP,
sharded (``dcp/``), so that a resume on another world size reshards them.

What a resume changes about the restored state (another peak lr, run length or world size)
are explicit steps of the trainer after the loops, not part of a load.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch

from ..core.errors import CheckpointError
from ..data import ShardLoader
from ..runtime.distributed import sum_over_ranks


class Stateful(Protocol):
    """A piece of training state a checkpoint carries. ``load_state_dict(state_dict())``
    restores it exactly; a component of the run's mapping returns JSON-serialisable values."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> None: ...


def state_dicts(components: Mapping[str, Stateful]) -> dict[str, dict[str, Any]]:
    return {name: component.state_dict() for name, component in components.items()}


def load_components(components: Mapping[str, Stateful], states: Mapping[str, Any], source: Path) -> None:
    """Load each component from its state in ``states``; a missing one is a CheckpointError
    (a checkpoint saved without it: EMA off, say)."""
    for name, component in components.items():
        if name not in states:
            raise CheckpointError(f"{source} has no {name!r} state (saved by a run without it)")
        component.load_state_dict(states[name])


def _zero() -> torch.Tensor:
    return torch.zeros(())


@dataclasses.dataclass
class TrainState:
    """Where the run is and what it has counted: the same on every rank."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    step_in_epoch: int = 0
    samples_seen: int = 0  # global: every rank's samples
    best_top1: float = -1.0
    # Optimizer steps skipped for a non-finite loss or gradient: a device tensor, so that the
    # loop counts them without a host sync (the logging step reads it).
    skipped_steps: torch.Tensor = dataclasses.field(default_factory=_zero)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "samples_seen": self.samples_seen,
            "best_top1": self.best_top1,
            "skipped_steps": int(self.skipped_steps.item()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.samples_seen = int(state["samples_seen"])
        self.best_top1 = float(state["best_top1"])
        self.skipped_steps.fill_(int(state["skipped_steps"]))


class RngState:
    """This process's RNG states (python, numpy, torch, CUDA): the drop path, mixup and
    everything else random after start-up draws from them, so a resume continues the draws."""

    def state_dict(self) -> dict[str, Any]:
        # Tensors and plain Python values only, so that weights_only loading works.
        kind, keys, pos, has_gauss, cached = cast(tuple, np.random.get_state(legacy=True))
        state = {
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(_tuplify(state["python"]))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


def _tuplify(x):
    """weights_only loading turns tuples into lists; RNG setters want tuples back."""
    if isinstance(x, list):
        return tuple(_tuplify(v) for v in x)
    return x


class JobDataPosition:
    """The data position of the job, for a resume on another world size: rank 0's (every rank
    is at the same place of the epoch; only their bad-sample counts differ, and those are
    :class:`JobDataCounts`' business). Loading it re-plans the rest of the epoch for this
    world size, every sample still once (``data/plan.py``)."""

    def __init__(self, loader: ShardLoader):
        self.loader = loader

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state, counters=False)


class JobDataCounts:
    """(bad samples, samples read) summed over ranks: what the job-wide limit on bad samples
    is checked against, and what a resume on another world size carries on from."""

    def __init__(self, loader: ShardLoader, device: torch.device, is_main: bool):
        self.loader, self.device, self.is_main = loader, device, is_main

    def totals(self) -> tuple[int, int]:
        """Collective: every rank calls it at the same steps."""
        bad, seen = sum_over_ranks([self.loader.bad_samples, self.loader.samples_seen], self.device).tolist()
        return int(bad), int(seen)

    def state_dict(self) -> dict[str, Any]:
        """Collective, like :meth:`totals` (``save_checkpoint`` takes it on every rank)."""
        bad, seen = self.totals()
        return {"bad_samples": bad, "samples_seen": seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Rank 0 carries the job's counts on and the others start at 0, so that the all-rank
        # sums, and the limit on them, go on where they were.
        bad, seen = (int(state["bad_samples"]), int(state["samples_seen"])) if self.is_main else (0, 0)
        self.loader.bad_samples, self.loader.samples_seen = bad, seen
