"""Any timm image classifier as a vit_dist model: ``model.name=timm:<name>``.

timm is an optional extra (``pip install vit_dist[timm]``): it is imported inside the functions
below only, so nothing else in vit_dist ever needs it; without it a ``timm:`` name is a one-line
ConfigError saying how to install it.

``create_timm_model(name, **kwargs)`` passes every keyword to ``timm.create_model`` (e.g.
``drop_path_rate``, ``embed_dim``, ``depths``), except ``img_size``: it is passed where the
architecture takes one (ViT, Swin, ...) and otherwise only recorded as the input size
(convolutional nets take any size). The model is first built on the meta device (no memory, no
init cost) to check the keywords and that it runs on the input size, and to count its FLOPs;
a keyword it does not take, or an input it cannot run on, is a ConfigError.

The model keeps timm's class and parameter names (timm checkpoints and exports load as they
are); its class gains :class:`TimmAdapter`, which makes it a ``VitDistModel``
(``models.protocol``, where each member is described): ``transformer_blocks()`` (models.blocks'
structural rule), ``no_weight_decay()`` (timm's, where the class has one), ``layer_ids()``
(timm's ``group_matcher``, as ``timm.optim.param_groups_layer_decay`` groups layers),
``flops_per_image()``, ``classifier_prefixes`` (timm's ``pretrained_cfg``), ``adapt_state_dict``
(timm's ``checkpoint_filter_fn`` of the architecture, e.g. position-embedding resizing),
``img_size`` / ``in_chans`` (timm's attributes where the class keeps them, else the input size
it was built for) and the contract's "none" values for the rest.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.options import did_you_mean
from .blocks import repeated_blocks
from .flops import count_flops
from .protocol import ModelDefaults

if TYPE_CHECKING:
    from .protocol import VitDistModule

    _Module = nn.Module  # TimmAdapter is mixed into timm's nn.Module classes only (_adapted)
else:
    _Module = object  # at run time a plain mixin: the timm class provides nn.Module

PREFIX = "timm:"
# timm.create_model keywords that fetch or load weights, or return something other than a
# classifier: vit_dist loads weights itself (model.pretrained) and trains classifiers.
_REFUSED = {
    "pretrained": "weights come from model.pretrained=FILE",
    "pretrained_cfg": "weights come from model.pretrained=FILE",
    "pretrained_cfg_overlay": "weights come from model.pretrained=FILE",
    "checkpoint_path": "weights come from model.pretrained=FILE",
    "cache_dir": "weights come from model.pretrained=FILE",
    "features_only": "vit_dist trains classifiers",
}
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


class _UnknownKeyword(ConfigError):
    """A keyword the architecture does not take (``keyword`` names it)."""

    def __init__(self, message: str, keyword: str):
        super().__init__(message)
        self.keyword = keyword


def _timm(name: str):
    try:
        import timm  # optional extra: only timm:<name> models need it
    except ImportError:
        raise ConfigError(
            f"model.name={PREFIX}{name} needs timm, which is not installed: pip install vit_dist[timm]"
        ) from None
    return timm


def timm_installed() -> bool:
    try:
        import timm  # noqa: F401  -- optional extra: only asked whether it is there
    except ImportError:
        return False
    return True


def list_timm_models(pattern: str = "*") -> list[str]:
    """timm's architecture names matching ``pattern`` (without the ``timm:`` prefix)."""
    return _timm(pattern).list_models(pattern)


def _check_name(timm, name: str) -> None:
    arch = timm.models.split_model_name_tag(name)[0]  # 'vit_base_patch16_224.augreg_in21k' is fine
    if not timm.is_model(arch):
        raise ConfigError(
            f"unknown timm model {name!r}{did_you_mean(arch, timm.list_models())} "
            "(python -m vit_dist.models list --timm PATTERN lists them)"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _input_size(timm, name: str, kwargs: dict) -> tuple[int, int, int]:
    """(channels, height, width) the model is built for: the keywords, else timm's default."""
    default = timm.models.get_pretrained_cfg(name)
    c, h, w = getattr(default, "input_size", None) or (3, 224, 224)
    size = kwargs.get("img_size")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(kwargs.get("in_chans", c)), int(h), int(w)


def _build(timm, name: str, kwargs: dict, meta: bool) -> nn.Module:
    """``timm.create_model``, user mistakes as one-line ConfigErrors."""
    try:
        if meta:
            with torch.device("meta"):
                return timm.create_model(name, **kwargs)
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        m = _UNEXPECTED.search(str(e))
        if not m:
            raise ConfigError(f"{PREFIX}{name} cannot be built with {kwargs}: {_first_line(e)}") from None
        bad = m.group(1)
        with torch.device("meta"):  # the class, for the keywords it does take
            cls = type(timm.create_model(name))
        valid = [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if bad in valid:  # the model takes it; a layer inside refused what it passed on
            raise ConfigError(f"{PREFIX}{name} cannot be built with {kwargs}: {_first_line(e)}") from None
        raise _UnknownKeyword(
            f"model {PREFIX}{name} has no option {bad!r}{did_you_mean(bad, valid)}; "
            f"{cls.__name__} takes: {', '.join(valid)}",
            bad,
        ) from None
    except (AssertionError, ValueError, RuntimeError, IndexError, KeyError, ZeroDivisionError) as e:
        # timm checks its keywords with asserts and arithmetic (a window that does not divide,
        # heads that do not divide the width): the user's keywords, said in one line.
        raise ConfigError(f"{PREFIX}{name} cannot be built with {kwargs}: {_first_line(e)}") from None


def _resolve(name: str, kwargs: dict) -> tuple[object, dict, tuple[int, int, int], nn.Module]:
    """Check name and keywords; returns (timm, the keywords timm gets, input size, meta model)."""
    timm = _timm(name)
    _check_name(timm, name)
    for k in kwargs:
        if k in _REFUSED:
            raise ConfigError(f"model.{k} is not passed to timm for {PREFIX}{name}: {_REFUSED[k]}")
    size = _input_size(timm, name, kwargs)
    passed = dict(kwargs)
    try:
        twin = _build(timm, name, passed, meta=True)
    except _UnknownKeyword as e:
        if e.keyword != "img_size":
            raise
        passed.pop("img_size")  # an architecture without a fixed input size (a conv net)
        twin = _build(timm, name, passed, meta=True)
    return timm, passed, size, twin


def check_timm_kwargs(name: str, kwargs: dict) -> None:
    """Raise a one-line ConfigError when ``timm:<name>`` cannot be built with ``kwargs``."""
    _resolve(name, kwargs)


def _count(model: nn.Module, size: tuple[int, int, int]) -> int:
    return count_flops(model, img_size=(size[1], size[2]), in_chans=size[0])


def create_timm_model(name: str, **kwargs) -> VitDistModule:
    """timm's ``name`` (no ``timm:`` prefix) built with ``kwargs``, adapted (module docstring)."""
    timm, passed, size, twin = _resolve(name, kwargs)
    try:
        flops = _count(twin, size)
    except Exception:  # a forward the meta device cannot run: counted on the real model below
        flops = None
    model = _build(timm, name, passed, meta=False)
    if flops is None:
        try:
            flops = _count(model, size)
        except Exception as e:  # a forward that fails on a real input: the input size does not fit
            raise ConfigError(
                f"{PREFIX}{name} cannot run on {size[0]}x{size[1]}x{size[2]} input (data.img_size, "
                f"data.in_chans): {_first_line(e)}"
            ) from None
    model.__class__ = _adapted(type(model))
    adapted = cast(TimmAdapter, model)  # its class now has TimmAdapter first (_adapted)
    adapted.model_name = PREFIX + name
    adapted.model_kwargs = dict(kwargs)
    adapted.timm_flops = flops
    adapted.timm_input_size = size
    return cast("VitDistModule", adapted)  # TimmAdapter on a timm model: the whole contract


class TimmAdapter(ModelDefaults, _Module):
    """A timm model as a ``VitDistModel`` (mixed into its class, ahead of it; no parameters).

    The one place that asks a timm class what it offers (:meth:`_timm_hook`): timm's optional
    hooks become the contract's members, with its "none" values where timm has no hook."""

    timm_flops: int
    timm_input_size: tuple[int, int, int]  # (channels, height, width) it was built for
    num_classes: int  # timm's model sets it

    def _timm_hook(self, name: str):
        """timm's own method ``name`` of this model (bound), or None where its class has none:
        looked up past the adapter and the contract's defaults, which sit ahead of the timm
        class in the model's MRO (``_adapted``)."""
        return getattr(super(ModelDefaults, self), name, None)

    # Non-data descriptors: timm's own attribute wins where the model sets one (a few do).
    @functools.cached_property
    def img_size(self) -> int | tuple[int, int]:
        _, h, w = self.timm_input_size
        return h if h == w else (h, w)

    @functools.cached_property
    def in_chans(self) -> int:
        return self.timm_input_size[0]

    def transformer_blocks(self) -> list[nn.Module]:
        return repeated_blocks(self)

    def no_weight_decay(self) -> set[str]:
        own = self._timm_hook("no_weight_decay")
        return set(own()) if own is not None else set()

    def layer_ids(self) -> tuple[dict[str, int], int] | None:
        """Parameter name -> layer id for layer-wise lr decay and the number of layers, as
        ``timm.optim.param_groups_layer_decay`` assigns them (the model's ``group_matcher``;
        a parameter it does not match goes to the last layer). None without a group_matcher."""
        group_matcher = self._timm_hook("group_matcher")
        if group_matcher is None:
            return None
        from timm.models import group_parameters  # timm models only: timm is installed

        layer_map = group_parameters(self, group_matcher(coarse=False), reverse=True)
        num_layers = max(layer_map.values()) + 1
        return {n: layer_map.get(n, num_layers - 1) for n, _ in self.named_parameters()}, num_layers

    def flops_per_image(self, executed: bool = False) -> int:
        """Forward FLOPs of one image at the configured input size, counted by FlopCounterMode
        when the model was built (timm publishes no analytic count); ``executed`` is the same."""
        return int(self.timm_flops)

    @property
    def classifier_prefixes(self) -> tuple[str, ...]:  # type: ignore[override]  # read-only: timm's pretrained_cfg
        head = getattr(self, "pretrained_cfg", {}).get("classifier") or ()
        return tuple(f"{h}." for h in ((head,) if isinstance(head, str) else head))

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The architecture's own ``checkpoint_filter_fn`` (older layouts, position-embedding
        resizing); the state dict as it is where there is none or it fails (load_pretrained
        then names what does not fit)."""
        fn = getattr(sys.modules.get(type(self).__module__), "checkpoint_filter_fn", None)
        if fn is None:
            return sd
        try:
            return dict(fn(dict(sd), self))
        except Exception:  # fall back to the plain state dict, which fit_state_dict checks key by key
            return sd


_ADAPTED: dict[type, type] = {}


def _adapted(cls: type) -> type:
    """``cls`` with :class:`TimmAdapter` mixed in (one class per timm class). The module stays
    timm's, so ``adapt_state_dict`` finds the architecture's checkpoint filter."""
    if cls not in _ADAPTED:
        _ADAPTED[cls] = type(f"Timm{cls.__name__}", (TimmAdapter, cls), {"__module__": cls.__module__})
    return _ADAPTED[cls]


def is_timm_name(name: str) -> bool:
    return name.startswith(PREFIX)
