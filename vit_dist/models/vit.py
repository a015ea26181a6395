"""Vision Transformer (Dosovitskiy et al., 2021) as a plain ``nn.Module``.

Pre-norm blocks, a class token, a learned position embedding and a linear head; global average
pooling is an option (then the final norm is applied after pooling, as ``fc_norm`` in timm).
Parameter names equal timm's ``VisionTransformer`` so timm and DeiT checkpoints load as they are.
"""

from __future__ import annotations

import contextlib
from typing import cast

import torch
from torch import nn

from ..core.errors import ConfigError
from .layers import (
    Attention,
    DropPath,
    LayerScale,
    Mlp,
    PatchEmbed,
    drop_path_rates,
    init_linear_and_norm,
    resample_abs_pos_embed,
    reset_drop_paths,
    trunc_normal_,
)
from .protocol import ModelDefaults
from .registry import ModelSpec, register_family, register_model

LN_EPS = 1e-6  # ViT/DeiT use eps 1e-6 (timm and the JAX reference), not PyTorch's 1e-5


class Block(nn.Module):
    """x + DropPath(LS(Attn(LN(x)))) then x + DropPath(LS(MLP(LN(x))))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        init_values: float | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, n_out: int | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D), or (B, n_out, D): the first ``n_out`` output tokens only."""
        if n_out is None:
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        else:
            x = x[:, :n_out] + self.drop_path1(self.ls1(self.attn(self.norm1(x), n_query=n_out)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def flops(self, n: int, n_out: int | None = None) -> int:
        return self.attn.flops(n, n_out) + self.mlp.flops(n if n_out is None else n_out)


class VisionTransformer(ModelDefaults, nn.Module):
    """ViT classifier. ``global_pool``: 'token' (class token) or 'avg' (mean of patch tokens).
    A ``VitDistModel`` (``models.protocol``)."""

    num_extra_tokens = 0  # prefix tokens beyond the class token (DeiT adds a distillation token)
    classifier_prefixes: tuple[str, ...] = ("head.",)

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        no_embed_class: bool = False,
        init_values: float | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self._check_pooling(global_pool, class_token)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.img_size = img_size
        self.in_chans = in_chans
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = (1 if class_token else 0) + self.num_extra_tokens
        # DeiT III (timm's no_embed_class): positions for the patches only, added before the
        # prefix tokens join; otherwise the class (and distillation) token has its own position.
        self.no_embed_class = no_embed_class
        self.num_pos_prefix = 0 if no_embed_class else self.num_prefix_tokens

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self._init_extra_tokens(embed_dim)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.patch_embed.num_patches + self.num_pos_prefix, embed_dim)
        )
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(
            *[
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias,
                    proj_drop_rate,
                    attn_drop_rate,
                    dpr[i],
                    init_values,
                )
                for i in range(depth)
            ]
        )
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_extra_heads(embed_dim, num_classes)
        self.init_weights()

    # Hooks for the distilled subclass; plain ViT has no extra tokens or heads.
    def _check_pooling(self, global_pool: str, class_token: bool) -> None:
        if global_pool not in ("token", "avg"):
            raise ConfigError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ConfigError("global_pool='token' needs class_token=True")

    def _init_extra_tokens(self, dim: int) -> None:
        pass

    def _init_extra_heads(self, dim: int, num_classes: int) -> None:
        pass

    def _prefix_tokens(self, b: int) -> list[torch.Tensor]:
        return [self.cls_token.expand(b, -1, -1)] if self.cls_token is not None else []

    def init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(init_linear_and_norm)
        for blk in self.blocks:
            for ls in (blk.ls1, blk.ls2):
                if isinstance(ls, LayerScale):
                    nn.init.constant_(ls.gamma, ls.init_values)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def init_non_persistent_buffers(self) -> None:
        """Refill the drop-path rates, e.g. after ``to_empty()`` on a model created on the meta device."""
        reset_drop_paths(self)

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pos: torch.Tensor = self.pos_embed
        if grid != self.patch_embed.grid_size:  # another input size: interpolate on the fly
            pos = resample_abs_pos_embed(pos, grid, self.num_pos_prefix, self.patch_embed.grid_size)
        if self.no_embed_class:
            x = x + pos
        x = torch.cat([*self._prefix_tokens(x.shape[0]), x], dim=1)  # (B, prefix + N, D)
        return self.pos_drop(x if self.no_embed_class else x + pos)

    def forward_features(self, x: torch.Tensor, last_block_tokens: int | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, prefix + N, D) normed tokens; with ``last_block_tokens`` the last
        block computes only that many leading tokens (see ``forward``)."""
        h, w = x.shape[-2:]
        grid = (h // self.patch_embed.patch_size[0], w // self.patch_embed.patch_size[1])
        x = self.patch_embed(x)  # (B, N, D)
        x = self._pos_embed(x, grid)
        for i, blk in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = blk(x, n_out=last_block_tokens) if last and last_block_tokens else blk(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x[:, 0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc_norm(self.pool(x))
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        # With token pooling the head reads only the prefix tokens, and the final norm is per
        # token, so the last block's attention queries, projection and MLP are computed for those
        # tokens alone: the same logits and gradients, ~1/depth fewer FLOPs (timm computes all).
        return self.forward_head(self.forward_features(x, last_block_tokens=self._last_block_tokens()))

    def _last_block_tokens(self) -> int | None:
        return self.num_prefix_tokens if self.global_pool == "token" else None

    def flops_per_image(self, executed: bool = False) -> int:
        """Analytic forward FLOPs (2 x multiply-accumulates of convs, linears and attention matmuls).

        By default the architecture's count (timm's published GMACs; what MFU is quoted
        against); ``executed=True`` counts what ``forward`` computes, with the last block cut
        to the pooled tokens."""
        n = self.patch_embed.num_patches + self.num_prefix_tokens
        heads = (1 + self.num_extra_tokens) if self.num_classes > 0 else 0
        n_out = self._last_block_tokens() if executed else None
        blocks = cast("list[Block]", list(self.blocks))  # __init__ fills it with Blocks only
        return (
            self.patch_embed.flops()
            + sum(blk.flops(n, n_out if i == len(blocks) - 1 else None) for i, blk in enumerate(blocks))
            + heads * 2 * self.embed_dim * self.num_classes
        )

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit a timm-layout ViT state dict to this model: resize the position embedding to this
        patch grid, and move the final norm between ``norm`` and ``fc_norm`` when the checkpoint
        was trained with the other pooling (the MAE fine-tuning convention)."""
        sd = dict(sd)
        pe = sd.get("pos_embed")
        if pe is not None and pe.ndim == 3 and pe.shape != self.pos_embed.shape:
            n_prefix = self.num_pos_prefix
            if pe.shape[1] - n_prefix > 0 and pe.shape[2] == self.pos_embed.shape[2]:
                # not a square grid: left as it is, reported as a shape mismatch by the loader
                with contextlib.suppress(ValueError):
                    sd["pos_embed"] = resample_abs_pos_embed(pe, self.patch_embed.grid_size, n_prefix)
        wants_fc_norm = isinstance(self.norm, nn.Identity)
        src, dst = ("norm.", "fc_norm.") if wants_fc_norm else ("fc_norm.", "norm.")
        if f"{src}weight" in sd and f"{dst}weight" not in sd:
            for k in ("weight", "bias"):
                if f"{src}{k}" in sd:
                    sd[f"{dst}{k}"] = sd.pop(f"{src}{k}")
        return sd


# Registered names (timm's) and the free-form family; the DeiT names are in deit.py.
VIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


@register_model
def vit_tiny_patch16_224() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(patch_size=16, **VIT_SIZES["tiny"]))


@register_model
def vit_small_patch16_224() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(patch_size=16, **VIT_SIZES["small"]))


@register_model
def vit_base_patch16_224() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(patch_size=16, **VIT_SIZES["base"]))


@register_model
def vit_large_patch16_224() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(patch_size=16, **VIT_SIZES["large"]))


@register_model
def vit_base_patch32_224() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(patch_size=32, **VIT_SIZES["base"]))


@register_model
def vit_base_patch16_384() -> ModelSpec:
    return ModelSpec(VisionTransformer, dict(img_size=384, patch_size=16, **VIT_SIZES["base"]))


@register_family
def vit() -> ModelSpec:
    """Any ViT: every size keyword is the caller's (the defaults are small)."""
    return ModelSpec(VisionTransformer, dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3))
