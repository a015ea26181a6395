"""The model contract: what vit_dist asks of a model, written down once.

A vit_dist model is a plain ``nn.Module`` (timm's parameter names, no distributed code) that
also has every member of :class:`VitDistModel`. The trainer, ``parallel``, ``optim``,
``weights``, ``distill``, ``exact_eval``, the metrics and the commands use these members by
plain attribute access: nothing asks a model whether it has one (the two functions that also
take any other module, ``blocks.model_blocks`` and ``pretrained.fit_state_dict``, ask
``isinstance(model, VitDistModel)`` once). An optional capability is a member with a stated
"none" value (``classifier_prefixes == ()``, ``layer_ids() is None``, ``adapt_state_dict`` the
identity, ``return_both_heads is None``, ``input_stats is None``, ``parallelize_plan() == {}``),
never an attribute that may be missing.

Who provides it:

- our families (``VisionTransformer``, ``DistilledVisionTransformer``, ``SwinTransformer``)
  inherit :class:`ModelDefaults` for the "none" values and define the rest;
- ``timm:<name>`` models get ``timm_models.TimmAdapter`` mixed into their class;
- ``registry.create_model`` sets ``model_name`` and ``model_kwargs`` on every model it builds.

A new family is one module: a class that inherits ``ModelDefaults`` (and ``nn.Module``) and
defines the members without a default, plus ``@register_model`` / ``@register_family``
functions next to it (``registry``), imported from ``models/__init__.py``;
``tests/unit/test_protocol.py`` checks every registered name against this contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


@runtime_checkable
class VitDistModel(Protocol):
    """What vit_dist asks of a model, beyond being an ``nn.Module`` (module docstring).

    ``isinstance(model, VitDistModel)`` tells whether every member is present (not their types);
    ``tests/unit/test_protocol.py`` checks the kinds too."""

    model_name: str | None
    """The name ``create_model`` built it by (``'vit_tiny_patch16_224'``, ``'vit'``,
    ``'timm:convnext_atto'``); None for a model built by calling its class."""

    model_kwargs: Mapping[str, Any]
    """Every keyword it was built with (the registered ones and the caller's, merged), what a
    checkpoint or export records so that ``create_model(model_name, **model_kwargs)`` rebuilds
    it; empty for a model built by calling its class."""

    num_classes: int
    """Classifier outputs (0: no classifier, the forward returns features)."""

    img_size: int | tuple[int, int]
    """The input size it is built for (FLOPs, position embeddings, ``count_flops``)."""

    in_chans: int
    """Input channels."""

    classifier_prefixes: tuple[str, ...]
    """State-dict prefixes of the classifier (``('head.',)``), which ``load_pretrained`` drops
    when a checkpoint's classifier has another size; ``()``: the model names none (a classifier
    that does not fit is then a mismatch like any other tensor)."""

    input_stats: tuple[Sequence[float], Sequence[float]] | None
    """(mean, std) of the inputs its weights expect, where they come with the weights (a hub
    teacher's ``config.json``); None: the data's ``data.mean`` / ``data.std``."""

    return_both_heads: bool | None
    """A model with a second, distillation head (DeiT) returns ``(cls_logits, dist_logits)`` in
    training and their mean in eval mode; an evaluator sets this True to get both also in eval
    mode. None: the model has one head (the option does not apply; leave it None)."""

    def transformer_blocks(self) -> list[nn.Module]:
        """Its blocks in execution order: the units FSDP shards one at a time, activation
        checkpointing recomputes and torch.compile compiles (``models.blocks``); ``[]``: none
        (FSDP then shards the model as one unit)."""
        ...

    def no_weight_decay(self) -> set[str]:
        """Parameter names (or name components, suffixes, fnmatch patterns) that get no weight
        decay beyond the 1-d parameters (``optim.param_groups``); ``set()``: none."""
        ...

    def layer_ids(self) -> tuple[dict[str, int], int] | None:
        """Parameter name -> layer id for layer-wise lr decay and the number of layers, where the
        model assigns them itself; None: ``optim.layer_ids`` derives them from
        ``transformer_blocks()``."""
        ...

    def flops_per_image(self, executed: bool = False) -> int:
        """Forward FLOPs of one image at ``img_size``: the architecture's count (MFU's
        numerator), or with ``executed`` what the forward computes (it may skip work the head
        never reads)."""
        ...

    def adapt_state_dict(self, sd: StateDict) -> StateDict:
        """A foreign (timm-layout) state dict fitted to this architecture: older layouts, resized
        position embeddings or bias tables. Returns the state dict; the identity where there is
        nothing to adapt. Whatever still does not fit is ``load_pretrained``'s to report."""
        ...

    def parallelize_plan(self) -> dict[str, Any]:
        """Tensor parallelism, per model: submodule name -> ``ParallelStyle``, as
        ``torch.distributed.tensor.parallel.parallelize_module`` takes it. Empty today: vit_dist
        parallelises by data only (DDP / FSDP over ``transformer_blocks()``); a model family
        opts in to tensor parallelism by returning its plan here."""
        ...


if TYPE_CHECKING:

    class VitDistModule(nn.Module, VitDistModel):
        """For the type checker only: an ``nn.Module`` with every member of :class:`VitDistModel`,
        what ``create_model`` returns. No class derives from it and nothing is an instance of it
        (Python types have no intersection); ``create_model`` casts what it builds to it."""


class ModelDefaults:
    """The contract's "none" values, for our model families (and ``TimmAdapter``) to inherit; a
    family overrides what it has. No parameters, no ``__init__``: mixed in next to
    ``nn.Module``. ``num_classes``, ``img_size``, ``in_chans``, ``transformer_blocks`` and
    ``flops_per_image`` have no default: a family sets and defines them."""

    model_name: str | None = None
    model_kwargs: Mapping[str, Any] = MappingProxyType({})  # create_model sets the model's own dict
    classifier_prefixes: tuple[str, ...] = ()
    input_stats: tuple[Sequence[float], Sequence[float]] | None = None
    return_both_heads: bool | None = None

    def no_weight_decay(self) -> set[str]:
        return set()

    def layer_ids(self) -> tuple[dict[str, int], int] | None:
        return None

    def adapt_state_dict(self, sd: StateDict) -> StateDict:
        return sd

    def parallelize_plan(self) -> dict[str, Any]:
        return {}
