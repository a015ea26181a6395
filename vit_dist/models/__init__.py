"""Vision Transformer models as plain ``nn.Module``s with timm-compatible parameter names, and
any timm classifier as ``timm:<name>`` (optional extra; ``timm_models``).

Public API: ``create_model``, ``build_model`` (from a run config), ``list_models``, ``load_pretrained``,
``flops_per_image``, ``model_blocks`` (what parallelism treats as a block), ``VitDistModel``
(what every model offers, ``protocol``).
The model families (``vit``, ``deit``, ``swin``) register their names where they are defined
(``@register_model``): importing them here fills the registry.
Models contain no distributed code; parallelism is applied from outside (vit_dist.runtime.parallel).
"""

from .blocks import model_blocks
from .deit import DistilledVisionTransformer
from .flops import count_flops, flops_per_image
from .pretrained import CheckpointMismatchError, LoadReport, load_pretrained, read_state_dict
from .protocol import ModelDefaults, VitDistModel
from .registry import (
    ModelSpec,
    build_model,
    check_model_kwargs,
    create_model,
    list_families,
    list_models,
    register_family,
    register_model,
)
from .swin import SwinTransformer
from .vit import VisionTransformer

__all__ = [
    "CheckpointMismatchError",
    "DistilledVisionTransformer",
    "LoadReport",
    "ModelDefaults",
    "ModelSpec",
    "SwinTransformer",
    "VisionTransformer",
    "VitDistModel",
    "build_model",
    "check_model_kwargs",
    "count_flops",
    "create_model",
    "flops_per_image",
    "list_families",
    "list_models",
    "load_pretrained",
    "model_blocks",
    "read_state_dict",
    "register_family",
    "register_model",
]
