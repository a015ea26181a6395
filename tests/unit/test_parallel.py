"""How the trainer wraps a model for data parallelism (``runtime.parallel``): DDP without the
deprecated keyword the pinned torch warns about on every rank."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn


@pytest.mark.parametrize("with_batchnorm", [False, True])
def test_ddp_is_built_without_a_deprecation_warning_and_syncs_only_batch_norm(group_of_one, with_batchnorm):
    from torch.nn.parallel import DistributedDataParallel

    from vit_dist.core.config import ParallelSection
    from vit_dist.runtime.distributed import DistEnv
    from vit_dist.runtime.parallel import parallelize

    layers = [nn.Linear(4, 4), *([nn.BatchNorm1d(4)] if with_batchnorm else []), nn.Linear(4, 2)]
    model = nn.Sequential(*layers)
    model.blocks = nn.ModuleList()  # the contract's blocks (none to wrap here)
    # world_size 2 takes the DDP path; the process group (of one) is what DDP talks to.
    env = DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning, FutureWarning included, fails the test
        wrapped = parallelize(model, env, ParallelSection(strategy="ddp"), precision="fp32")
    assert isinstance(wrapped, DistributedDataParallel)
    synced = getattr(wrapped, "forward_sync_buffers", None)
    if synced is None:  # torch without the new keyword
        synced = wrapped.broadcast_buffers
    assert synced is with_batchnorm
