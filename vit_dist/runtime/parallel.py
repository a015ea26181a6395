"""Apply parallelism to a plain model, from the outside, in one place.

The order is fixed and written down once, as torchtitan does it:

    1. activation checkpointing per transformer block (recompute in backward, saves memory)
    2. torch.compile per block (graphs stay small; the same compiled block is reused)
    3. FSDP2: ``fully_shard`` on every block, then on the root, with a mixed-precision policy
       (low-precision compute copies of fp32 master weights, fp32 gradient reduction)
       -- or DDP for ``strategy=ddp`` (when there is more than one process).

"Per block" means the model's blocks as ``models.blocks.model_blocks`` finds them: our models
name theirs (``transformer_blocks()``); any other model, timm's included, gets the structural
rule written there (the children of the innermost lists of same-class, model-defined modules:
timm's ``blocks.*``, ``layers.*.blocks.*``, ``stages.*.blocks.*``). What lies outside the blocks
is sharded with the root. Models never import this module. Parameter names are unchanged by
steps 1-3 (FSDP2 keeps them; DDP prefixes ``module.``, see ``unwrap``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from ..core.config import ParallelSection
from ..models.blocks import model_blocks
from .distributed import DistEnv
from .precision import DTYPES

log = logging.getLogger(__name__)


def apply_activation_checkpointing(blocks: list[nn.Module]) -> None:
    """Each block's forward is recomputed in backward; parameter names stay as they are."""
    for blk in blocks:
        inner = blk.forward

        def forward(*args, _inner=inner, **kwargs):
            return torch.utils.checkpoint.checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        blk.forward = forward


def apply_compile(blocks: list[nn.Module], backend: str | Callable = "inductor") -> None:
    """torch.compile each block in place (names and state-dict keys unchanged).

    All blocks share one ``forward`` code object, and dynamo's recompile limit (8 by default)
    counts per code object: Swin-T needs 7 graphs (4 stage shapes x shifted or not) for training
    and as many again under ``no_grad`` for evaluation, so past the limit the deeper blocks would
    silently run eager. The limit is raised to cover every block in both modes. Shapes are static
    (``dynamic=False``): the stage shapes differ, and dynamo's automatic dynamic shapes would
    otherwise switch to slower shape-generic kernels after the second stage.
    """
    import torch._dynamo.config as dynamo_config  # loads the compiler stack: only when compiling

    needed = 2 * len(blocks) + 4  # train + eval per block, plus a last partial batch or two
    key = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"  # < 2.7
    if getattr(dynamo_config, key) < needed:
        setattr(dynamo_config, key, needed)
    for blk in blocks:
        blk.compile(backend=backend, dynamic=False)


def apply_fsdp(
    model: nn.Module, blocks: list[nn.Module], env: DistEnv, precision: str, reshard: bool
) -> None:
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=DTYPES[precision], reduce_dtype=torch.float32)
    for blk in blocks:
        fully_shard(blk, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    # The root keeps what is outside the blocks (embeddings, norms, heads); no reshard after its
    # forward because backward needs those parameters at once.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def shard_frozen(module: nn.Module, env: DistEnv, precision: str) -> None:
    """FSDP2 on a forward-only module (a large distillation teacher): one unit, resharded after
    each forward."""
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    fully_shard(module, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=DTYPES[precision]))


def parallelize(model: nn.Module, env: DistEnv, section: ParallelSection, *, precision: str) -> nn.Module:
    """Steps 1-3 above as ``parallel.*`` asks, on a model already on ``env.device``. Returns the
    model to train."""
    blocks = model_blocks(model)
    if section.activation_checkpointing:
        apply_activation_checkpointing(blocks)
    if section.compile:
        apply_compile(blocks)
    if section.strategy == "fsdp":
        if not torch.distributed.is_initialized():
            log.warning(
                "parallel.strategy=fsdp in a single process without a process group: nothing to shard"
            )
            return model
        apply_fsdp(model, blocks, env, precision, section.reshard_after_forward)
        return model
    if env.world_size > 1:
        # Our models have no running statistics (Swin's masks are identical everywhere);
        # a model with batch norm (timm's ResNet, EfficientNet) gets rank 0's statistics on
        # every rank, DDP's default, so all ranks evaluate and checkpoint the same model.
        sync = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        return DistributedDataParallel(
            model,
            device_ids=[env.device.index] if env.device.type == "cuda" else None,
            **_buffer_sync(sync),
        )
    return model


def _buffer_sync(sync: bool) -> dict[str, Any]:
    """DDP's keyword for syncing buffers in each forward. Newer torch renamed it
    (``forward_sync_buffers``, with a FutureWarning on every rank for the old
    ``broadcast_buffers``); the GPU image's torch 2.11 has only the old one. Both keep the
    initial broadcast from rank 0, which our buffers (identical on every rank) do not mind."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": sync}
    return {"broadcast_buffers": sync}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model (DDP's ``module``); FSDP2 shards in place, so it is the model itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def is_fsdp(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on gradient-accumulation micro-steps."""
    if not enabled:
        yield
        return
    if isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):  # is_fsdp
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def reshard(model: nn.Module) -> None:
    """Put every FSDP2 module back into its sharded state (a forward without backward, e.g. in
    evaluation, leaves the root unsharded), so that ``named_parameters()`` are the shards."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly DTensor) parameter or gradient."""
    return t.to_local() if hasattr(t, "to_local") else t
