"""The unit tier's rule, enforced: a unit test starts no process of its own. Running Python
(``python -m vit_dist...``, ``accelerate launch``), a shell, SLURM or apt, or starting a
multiprocessing child (a loader worker, a spawned rank) fails the test, naming the tier it
belongs to (tests/integration/). A library's one-off probe of the system (``ldconfig -p`` from
ctypes, matplotlib's ``fc-list``) is not a test's process and is let through."""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
import sys
from pathlib import Path

import pytest

_REFUSED = {"accelerate", "torchrun", "bash", "sh", "srun", "sbatch", "salloc", "scontrol", "apt-get"}
_REFUSED |= {"slurmd", "slurmctld", "munged", "wandb", "wandb-core"}


_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    """Every test of this tier carries the ``unit`` marker, so that one ``-m`` expression can pick
    the tier plus marked integration tests (``.ci/run``'s oldest-torch pass)."""
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.unit)


class StartsAProcess(AssertionError):
    pass


def _refused(argv) -> bool:
    first = argv if isinstance(argv, (str, bytes, os.PathLike)) else (list(argv) or [""])[0]
    name = os.path.basename(os.fsdecode(first).split()[0] if first else "")
    return name.startswith("python") or name in _REFUSED or os.fsdecode(first) == sys.executable


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    popen_init = subprocess.Popen.__init__

    def guarded_popen(self, args, *rest, **kwargs):
        if _refused(args):
            raise StartsAProcess(f"a unit test ran {args!r}: it belongs in tests/integration/")
        popen_init(self, args, *rest, **kwargs)

    def no_child(self, *args, **kwargs):
        raise StartsAProcess("a unit test started a multiprocessing child: it belongs in tests/integration/")

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", no_child)


@pytest.fixture
def group_of_one():
    """A gloo process group of one in this process (FSDP, DCP and DDP need one): its DistEnv."""
    import torch
    import torch.distributed as dist

    from vit_dist.runtime.distributed import DistEnv

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    finally:
        dist.destroy_process_group()
