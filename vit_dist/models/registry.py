"""Model registry: timm's names and sizes, plus free-form families for small experiments.

``create_model('vit_small_patch16_224', num_classes=10)`` builds the named architecture;
``create_model('vit', img_size=16, patch_size=4, embed_dim=64, depth=4, num_heads=2)`` builds
any size; ``create_model('timm:convnext_atto', num_classes=10)`` builds any timm classifier
(``timm_models``; timm is an optional extra). A plain name is always ours
(``vit_tiny_patch16_224``), ``timm:`` always timm's. Unknown names and keywords fail with the
closest valid one named.

This module is the mechanics only. A model family registers its names next to its class, as
timm does: a function named like the model, decorated with ``@register_model`` (a fixed
architecture) or ``@register_family`` (a free-form family, small defaults), returning its
:class:`ModelSpec`::

    @register_model
    def vit_tiny_patch16_224() -> ModelSpec:
        return ModelSpec(VisionTransformer, dict(patch_size=16, embed_dim=192, depth=12, num_heads=3))

The keywords a name accepts are its class's constructor parameters. Every model that
``create_model`` builds satisfies ``models.protocol.VitDistModel``.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from torch import nn

from ..core.config import DataSection, ModelSection
from ..core.errors import ConfigError
from ..core.options import did_you_mean
from .pretrained import load_pretrained
from .timm_models import PREFIX as TIMM_PREFIX
from .timm_models import check_timm_kwargs, create_timm_model, list_timm_models, timm_installed

if TYPE_CHECKING:
    from .protocol import VitDistModule


@dataclass(frozen=True)
class ModelSpec:
    """A registered name: the model class and the keywords the name fixes (the caller's
    keywords override them)."""

    cls: type[nn.Module]
    kwargs: dict = field(default_factory=dict)


SpecFn = Callable[[], ModelSpec]

_REGISTRY: dict[str, ModelSpec] = {}
_FAMILIES: dict[str, ModelSpec] = {}
_MODULE_OF: dict[str, str] = {}  # name -> the module that registered it


def _add(table: dict[str, ModelSpec], fn: SpecFn) -> SpecFn:
    name = fn.__name__
    if name in _REGISTRY or name in _FAMILIES:  # a second definition: a bug in the package
        raise ValueError(f"model {name!r} is registered twice ({fn.__module__})")
    spec = fn()
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"@register {fn.__module__}.{name} returned {type(spec).__name__}, not a ModelSpec")
    table[name] = spec
    _MODULE_OF[name] = fn.__module__
    return fn


def register_model(fn: SpecFn) -> SpecFn:
    """Register ``fn.__name__`` (timm's name for the architecture) as the model ``fn()``
    returns; ``fn`` is returned as it is."""
    return _add(_REGISTRY, fn)


def register_family(fn: SpecFn) -> SpecFn:
    """Register ``fn.__name__`` as a free-form family: ``fn()``'s keywords are small defaults
    that the caller is expected to set (``list_families``)."""
    return _add(_FAMILIES, fn)


def list_models(pattern: str = "*", module: str | None = None) -> list[str]:
    """Registered model names (sorted), optionally filtered by a shell-style pattern like 'swin*'
    and by the module that registers them (``'vit_dist.models.swin'``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern) and module in (None, _MODULE_OF[n]))


def list_families(module: str | None = None) -> list[str]:
    """The free-form families (sorted), optionally only those ``module`` registers."""
    return sorted(n for n in _FAMILIES if module in (None, _MODULE_OF[n]))


def model_kwargs(cls: type[nn.Module]) -> list[str]:
    """The keyword arguments a model class accepts (its constructor's parameters)."""
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def resolve_spec(name: str) -> ModelSpec:
    spec = _REGISTRY.get(name) or _FAMILIES.get(name)
    if spec is None:
        names = list_models() + list_families()
        if timm_installed() and list_timm_models(name):
            raise ConfigError(f"unknown model {name!r}; timm has it: model.name={TIMM_PREFIX}{name}")
        raise ConfigError(
            f"unknown model {name!r}{did_you_mean(name, names)}; known: {', '.join(names)} "
            f"(and any timm model as {TIMM_PREFIX}<name>)"
        )
    return spec


def check_model_kwargs(name: str, overrides: dict) -> None:
    """Raise a one-line ConfigError naming any keyword the model does not take."""
    if name.startswith(TIMM_PREFIX):
        check_timm_kwargs(name[len(TIMM_PREFIX) :], overrides)
        return
    spec = resolve_spec(name)
    valid = model_kwargs(spec.cls)
    for k in overrides:
        if k not in valid:
            raise ConfigError(
                f"model {name!r} has no option {k!r}{did_you_mean(k, valid)}; options: {', '.join(valid)}"
            )


def create_model(name: str, **overrides) -> VitDistModule:
    """Build a registered model (timm name), a free-form family ('vit', 'deit_distilled', 'swin')
    or, as ``timm:<name>``, timm's own model; a ``VitDistModel`` (``models.protocol``) either way."""
    if name.startswith(TIMM_PREFIX):
        return create_timm_model(name[len(TIMM_PREFIX) :], **overrides)
    spec = resolve_spec(name)
    check_model_kwargs(name, overrides)
    kwargs = {**spec.kwargs, **overrides}
    # A registered class is a family of ours: ModelDefaults + nn.Module (tests check the contract).
    model = cast("VitDistModule", spec.cls(**kwargs))
    model.model_name = name
    model.model_kwargs = kwargs
    return model


def build_model(model: ModelSection, data: DataSection, num_classes: int) -> VitDistModule:
    """The plain model a run's ``model`` section describes: ``model.name`` and its keywords,
    with the data's image size, channels and ``num_classes`` as defaults, and
    ``model.pretrained`` loaded."""
    kwargs = dict(model.kwargs)
    kwargs.setdefault("num_classes", num_classes)
    kwargs.setdefault("img_size", data.img_size)
    kwargs.setdefault("in_chans", data.in_chans)
    if kwargs["img_size"] != data.img_size:
        raise ConfigError(f"model.img_size={kwargs['img_size']} differs from data.img_size={data.img_size}")
    built = create_model(model.name, **kwargs)
    if model.pretrained:
        load_pretrained(built, model.pretrained)
    return built
