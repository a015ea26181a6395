"""Model registry: timm's names and sizes, plus free-form families for small experiments.

``create_model('vit_small_patch16_224', num_classes=10)`` builds the named architecture;
``create_model('vit', img_size=16, patch_size=4, embed_dim=64, depth=4, num_heads=2)`` builds
any size; ``create_model('timm:convnext_atto', num_classes=10)`` builds any timm classifier
(``timm_models``; timm is an optional extra). A plain name is always ours
(``vit_tiny_patch16_224``), ``timm:`` always timm's. Unknown names and keywords fail with the
closest valid one named.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field

from torch import nn

from ..config import Config
from ..options import did_you_mean
from .deit import DistilledVisionTransformer
from .pretrained import load_pretrained
from .swin import SwinTransformer
from .timm_models import PREFIX as TIMM_PREFIX
from .timm_models import check_timm_kwargs, create_timm_model, list_timm_models, timm_installed
from .vit import VisionTransformer


@dataclass(frozen=True)
class ModelSpec:
    cls: type[nn.Module]
    kwargs: dict = field(default_factory=dict)


_VIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}
_SWIN_SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}

_REGISTRY: dict[str, ModelSpec] = {}


def _register(name: str, cls: type[nn.Module], **kwargs) -> None:
    _REGISTRY[name] = ModelSpec(cls, kwargs)


for _size in ("tiny", "small", "base", "large"):
    _register(f"vit_{_size}_patch16_224", VisionTransformer, patch_size=16, **_VIT_SIZES[_size])
_register("vit_base_patch32_224", VisionTransformer, patch_size=32, **_VIT_SIZES["base"])
_register("vit_base_patch16_384", VisionTransformer, img_size=384, patch_size=16, **_VIT_SIZES["base"])
for _size in ("tiny", "small", "base"):
    # DeiT without distillation is the ViT architecture trained with the DeiT recipe.
    _register(f"deit_{_size}_patch16_224", VisionTransformer, patch_size=16, **_VIT_SIZES[_size])
    _register(
        f"deit_{_size}_distilled_patch16_224", DistilledVisionTransformer, patch_size=16, **_VIT_SIZES[_size]
    )
for _size in ("tiny", "small", "base"):
    _register(
        f"swin_{_size}_patch4_window7_224", SwinTransformer, patch_size=4, window_size=7, **_SWIN_SIZES[_size]
    )
_register(
    "swin_base_patch4_window12_384",
    SwinTransformer,
    img_size=384,
    patch_size=4,
    window_size=12,
    **_SWIN_SIZES["base"],
)

# Free-form families: every size keyword is given by the caller (defaults are small).
_FAMILIES: dict[str, ModelSpec] = {
    "vit": ModelSpec(VisionTransformer, dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3)),
    "deit_distilled": ModelSpec(
        DistilledVisionTransformer, dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3)
    ),
    "swin": ModelSpec(
        SwinTransformer,
        dict(img_size=32, patch_size=2, embed_dim=48, depths=(2, 2), num_heads=(3, 6), window_size=4),
    ),
}


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names (sorted), optionally filtered by a shell-style pattern like 'swin*'."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def model_kwargs(cls: type[nn.Module]) -> list[str]:
    """The keyword arguments a model class accepts (its constructor's parameters)."""
    sig = inspect.signature(cls.__init__)
    if cls is DistilledVisionTransformer:
        sig = inspect.signature(VisionTransformer.__init__)
    return [p for p in sig.parameters if p != "self"]


def resolve_spec(name: str) -> ModelSpec:
    spec = _REGISTRY.get(name) or _FAMILIES.get(name)
    if spec is None:
        names = list_models() + list_families()
        if timm_installed() and list_timm_models(name):
            raise ValueError(f"unknown model {name!r}; timm has it: model.name={TIMM_PREFIX}{name}")
        raise ValueError(
            f"unknown model {name!r}{did_you_mean(name, names)}; known: {', '.join(names)} "
            f"(and any timm model as {TIMM_PREFIX}<name>)"
        )
    return spec


def check_model_kwargs(name: str, overrides: dict) -> None:
    """Raise a one-line ValueError naming any keyword the model does not take."""
    if name.startswith(TIMM_PREFIX):
        check_timm_kwargs(name[len(TIMM_PREFIX) :], overrides)
        return
    spec = resolve_spec(name)
    valid = model_kwargs(spec.cls)
    for k in overrides:
        if k not in valid:
            raise ValueError(
                f"model {name!r} has no option {k!r}{did_you_mean(k, valid)}; options: {', '.join(valid)}"
            )


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model (timm name), a free-form family ('vit', 'deit_distilled', 'swin')
    or, as ``timm:<name>``, timm's own model."""
    if name.startswith(TIMM_PREFIX):
        return create_timm_model(name[len(TIMM_PREFIX) :], **overrides)
    spec = resolve_spec(name)
    check_model_kwargs(name, overrides)
    kwargs = {**spec.kwargs, **overrides}
    model = spec.cls(**kwargs)
    model.model_name = name
    model.model_kwargs = kwargs
    return model


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The plain model a run config describes: ``model.name`` and its keywords, with the data's
    image size, channels and ``num_classes`` as defaults, and ``model.pretrained`` loaded."""
    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("num_classes", num_classes)
    kwargs.setdefault("img_size", cfg.data.img_size)
    kwargs.setdefault("in_chans", cfg.data.in_chans)
    if kwargs["img_size"] != cfg.data.img_size:
        raise ValueError(
            f"model.img_size={kwargs['img_size']} differs from data.img_size={cfg.data.img_size}"
        )
    model = create_model(cfg.model.name, **kwargs)
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained)
    return model
