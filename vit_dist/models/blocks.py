"""Which submodules of a model are its blocks: the units that FSDP shards one at a time,
activation checkpointing recomputes and torch.compile compiles (``vit_dist.runtime.parallel``).

A vit_dist model names its own (``transformer_blocks()``, ``models.protocol``; a ``timm:``
model's are found by the rule below). For any other module (a raw timm model), the rule is
structural, the innermost repeated units:

- a *block list* is an ``nn.Sequential`` or ``nn.ModuleList`` whose children all have one class,
  a class the model defines (not a ``torch.nn`` layer, not itself a list) and that holds
  parameters;
- a block list with another block list somewhere below it gives way to that one (a list of
  stages yields to the block lists inside each stage);
- the blocks are the children of the remaining block lists, in module order.

So timm's ViT gives ``blocks.*``, Swin ``layers.*.blocks.*``, ConvNeXt ``stages.*.blocks.*``,
ResNet ``layer1-4.*``, EfficientNet / MobileNet ``blocks.*.*``: the residual blocks, also when a
stage has a single one. What lies outside them (stems, patch merging / downsampling between
stages, final norm, head) stays with the root. A block that itself held a list of same-class
submodules would be split into those (still correct, only finer units); a model without any
block list has no blocks (FSDP then shards it as one unit).
"""

from __future__ import annotations

from torch import nn

from .protocol import VitDistModel

_LISTS = (nn.Sequential, nn.ModuleList)


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, _LISTS):
        return False
    children = list(module.children())
    if not children:
        return False
    cls = type(children[0])
    return (
        all(type(c) is cls for c in children)
        and not isinstance(children[0], _LISTS)
        and not cls.__module__.startswith("torch.nn.")  # a layer (Linear, Conv2d), not a block
        and all(any(True for _ in c.parameters()) for c in children)
    )


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The children of the innermost block lists of ``model``, in module order (see above)."""
    lists = [m for m in model.modules() if _is_block_list(m)]
    inner = []
    for lst in lists:
        below = {id(m) for m in lst.modules() if m is not lst}
        if not any(id(other) in below for other in lists):
            inner.append(lst)
    return [blk for lst in inner for blk in lst.children()]


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """A vit_dist model's ``transformer_blocks()`` (``models.protocol``); for any other module
    (a raw timm model), :func:`repeated_blocks`."""
    return list(model.transformer_blocks()) if isinstance(model, VitDistModel) else repeated_blocks(model)
