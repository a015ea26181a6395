"""Exponential moving average of the weights, working under DDP and FSDP2 alike.

The EMA holds one tensor per parameter, of the parameter's own kind: under FSDP2 a DTensor
shard (so the EMA is sharded like the model and saved/resharded with it by DCP), otherwise a
plain tensor. Updates are one fused ``lerp`` over this rank's local data, on the device, with
no synchronisation. To evaluate the EMA the weights are swapped in place and back.

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` (n = updates so far), as timm's
ModelEmaV3 does, so that short runs are not dominated by the random initialisation.

Checkpoints: ``state_dict()`` is the update count (a component of the run's training state,
``checkpoint/state.py``); the weights (:attr:`ModelEma.params`) are tensors that ``checkpoint/store.py``
saves with the model's, sharded like them under FSDP.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..runtime.parallel import local_tensor, reshard


class ModelEma:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.names = [n for n, p in model.named_parameters()]
        with torch.no_grad():
            self.params = {n: p.detach().clone() for n, p in model.named_parameters()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        reshard(model)
        named = dict(model.named_parameters())
        ema = [local_tensor(self.params[n]) for n in self.names]
        cur = [local_tensor(named[n].detach()) for n in self.names]
        torch._foreach_lerp_(ema, cur, 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def _swap(self, model: nn.Module) -> None:
        reshard(model)
        named = dict(model.named_parameters())
        for n in self.names:
            a, b = local_tensor(named[n].detach()), local_tensor(self.params[n])
            tmp = a.clone()
            a.copy_(b)
            b.copy_(tmp)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module):
        """Temporarily put the EMA weights into ``model`` (for evaluation or export)."""
        self._swap(model)
        try:
            yield model
        finally:
            self._swap(model)

    def state_dict(self) -> dict[str, int]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.updates = int(state["updates"])
