"""DeiT with a distillation token (Touvron et al., 2021).

A second learned token travels with the class token through the blocks; its output feeds a
second head (``head_dist``) that the distillation loss trains against a teacher. In training
mode the forward returns both logits ``(cls_logits, dist_logits)``; in eval mode their mean, as
the paper does at test time (or both, when ``return_both_heads`` is set). The plain
(non-distilled) DeiT models are ViTs (registered below).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ConfigError
from .layers import trunc_normal_
from .registry import ModelSpec, register_family, register_model
from .vit import VIT_SIZES, VisionTransformer


class DistilledVisionTransformer(VisionTransformer):
    num_extra_tokens = 1
    classifier_prefixes = ("head.", "head_dist.")
    # Set by an evaluator that wants each head's logits (and their agreement with a teacher)
    # also in eval mode; the forward then returns the tuple as in training (models.protocol).
    return_both_heads: bool | None = False

    # No __init__ of its own: it takes VisionTransformer's keywords (what the registry offers).
    def _check_pooling(self, global_pool: str, class_token: bool) -> None:
        if global_pool != "token" or not class_token:
            raise ConfigError(
                "the distilled DeiT reads its class and distillation tokens: global_pool='token'"
            )

    def _init_extra_tokens(self, dim: int) -> None:
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))

    def _init_extra_heads(self, dim: int, num_classes: int) -> None:
        self.head_dist = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def _prefix_tokens(self, b: int) -> list[torch.Tensor]:
        return [*super()._prefix_tokens(b), self.dist_token.expand(b, -1, -1)]  # class token first

    def init_weights(self) -> None:
        super().init_weights()
        trunc_normal_(self.dist_token, std=0.02)

    def forward_head(  # type: ignore[override]  # both heads in training (return_both_heads): a tuple
        self, x: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x_cls = self.head(self.head_drop(x[:, 0]))
        x_dist = self.head_dist(self.head_drop(x[:, 1]))
        if self.training or self.return_both_heads:
            return x_cls, x_dist
        return (x_cls + x_dist) / 2


# DeiT without distillation is the ViT architecture trained with the DeiT recipe.
@register_model
def deit_tiny_patch16_224() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(patch_size=16, **VIT_SIZES["tiny"]))


@register_model
def deit_tiny_distilled_patch16_224() -> ModelSpec:
    return ModelSpec(DistilledVisionTransformer, dict(patch_size=16, **VIT_SIZES["tiny"]))


@register_model
def deit_small_patch16_224() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(patch_size=16, **VIT_SIZES["small"]))


@register_model
def deit_small_distilled_patch16_224() -> ModelSpec:
    return ModelSpec(DistilledVisionTransformer, dict(patch_size=16, **VIT_SIZES["small"]))


@register_model
def deit_base_patch16_224() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(patch_size=16, **VIT_SIZES["base"]))


@register_model
def deit_base_distilled_patch16_224() -> ModelSpec:
    return ModelSpec(DistilledVisionTransformer, dict(patch_size=16, **VIT_SIZES["base"]))


# DeiT III ("Revenge of the ViT"): the ViT with LayerScale and patch-only position embeddings,
# under timm's names, so that timm's deit3 weights load (tests/unit/test_pretrained.py).
DEIT3 = dict(patch_size=16, no_embed_class=True, init_values=1e-6)


@register_model
def deit3_small_patch16_224() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(**DEIT3, **VIT_SIZES["small"]))


@register_model
def deit3_base_patch16_224() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(**DEIT3, **VIT_SIZES["base"]))


@register_family
def deit_distilled() -> ModelSpec:
    """Any distilled DeiT: every size keyword is the caller's (the defaults are small)."""
    return ModelSpec(
        DistilledVisionTransformer, dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3)
    )
