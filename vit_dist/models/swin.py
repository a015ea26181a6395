"""Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows").

Parameter names and state-dict layout are identical to timm >= 0.9 ``SwinTransformer`` (patch merging at
the *start* of stages 1.., classifier ``head.fc``), so timm checkpoints load strictly; ``adapt_state_dict``
also converts the original Microsoft / timm < 0.9 layout (patch merging at the end of a stage, ``head.``).

Activations stay channels-last (B, H, W, C) between blocks. Window attention runs through
``F.scaled_dot_product_attention`` with the relative position bias and the shifted-window mask passed
together as one additive float bias. The windows of one image are folded into the head dimension,
(B, nW * heads, N, head_dim), so that the (nW, heads, N, N) bias broadcasts over the batch without a
batch-sized copy and the inputs stay 4-D (the layout the fused CUDA kernels accept).

Relative position indices and shift masks depend only on the window layout, so they are built once:
at construction for the configured image size (non-persistent buffers, not in the state dict) and,
for any other input size, once per (padded size, device) in a per-block cache.
"""

from __future__ import annotations

import math
import re
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import CheckpointMismatchError, ConfigError
from .layers import (
    Attention,
    DropPath,
    Mlp,
    PatchEmbed,
    drop_path_rates,
    init_linear_and_norm,
    resample_grid,
    reset_drop_paths,
    to_2tuple,
    trunc_normal_,
)
from .protocol import ModelDefaults
from .registry import ModelSpec, register_family, register_model

__all__ = [
    "PatchMerging",
    "SwinStage",
    "SwinTransformer",
    "SwinTransformerBlock",
    "WindowAttention",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]

_MASKED = float("-inf")  # every token keeps itself in its window, so no softmax row is all -inf


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, wh*ww, C); windows in row-major order, tokens row-major inside a window."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)  # (B, nH, nW_, wh, ww, C)
    return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """Inverse of ``window_partition``: (B, nW, wh*ww, C) -> (B, H, W, C)."""
    b, _, _, c = windows.shape
    wh, ww = window
    x = windows.view(b, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)  # (B, nH, wh, nW_, ww, C)
    return x.reshape(b, h, w, c)


def relative_position_index(wh: int, ww: int, device: torch.device | None = None) -> torch.Tensor:
    """(N, N) index into the ((2wh-1)*(2ww-1), heads) bias table for every query/key pair of a window."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
    ).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N), query minus key
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)  # (N, N)


def shifted_window_mask(
    hp: int, wp: int, window: tuple[int, int], shift: tuple[int, int], device: torch.device | None = None
) -> torch.Tensor:
    """Additive (nW, N, N) mask (0 / -inf) for the shifted windows of a padded (hp, wp) map.

    After the cyclic roll, the last window row/column holds tokens from opposite image borders; they
    must not attend to each other. Each axis is cut into the regions [0, P-w), [P-w, P-s), [P-s, P)
    (a single region when that axis is not shifted) and tokens only attend within their region.
    The cuts are placed on the padded size, exactly as timm does (it rolls, then pads); when padding is
    needed they do not fall on the roll seam at H - s, a timm quirk kept so that checkpoints behave the same.
    """

    def labels(size: int, w: int, s: int) -> torch.Tensor:
        lab = torch.zeros(size, dtype=torch.long, device=device)
        if s > 0:
            lab[size - w : size - s] = 1
            lab[size - s :] = 2
        return lab

    region = labels(hp, window[0], shift[0])[:, None] * 3 + labels(wp, window[1], shift[1])[None, :]
    win = window_partition(region[None, :, :, None], window).squeeze(-1).squeeze(0)  # (nW, N)
    differ = win[:, :, None] != win[:, None, :]  # (nW, N, N)
    return torch.zeros(differ.shape, device=device).masked_fill_(differ, _MASKED)


class WindowAttention(Attention):
    """Multi-head self-attention inside windows, with a learned relative position bias per head."""

    relative_position_index: torch.Tensor  # a buffer (register_buffer)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, int],
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.window_size = to_2tuple(window_size)
        wh, ww = self.window_size
        self.window_area = wh * ww
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        # Pure function of the window size: a buffer so it follows .to(device), but not saved.
        self.register_buffer("relative_position_index", relative_position_index(wh, ww), persistent=False)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias gathered from the table; a function of parameters, so recomputed per call."""
        n = self.window_area
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, heads)
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(  # type: ignore[override]  # windows of (B, nW, N, C), no n_query: not a drop-in Attention
        self, x: torch.Tensor, attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, nW, N, C) windows; attn_bias: (nW or 1, heads, N, N), shared by all images."""
        b, nw, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(b, nw, n, 3, h, d).permute(3, 0, 1, 4, 2, 5)  # (3, B, nW, heads, N, d)
        # Fold windows into heads so the per-window bias broadcasts over the batch dimension only.
        q, k, v = qkv.reshape(3, b, nw * h, n, d).unbind(0)  # each (B, nW*heads, N, d)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype).expand(nw, h, n, n).reshape(1, nw * h, n, n)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B, nW*heads, N, d)
        x = x.view(b, nw, h, n, d).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj_drop(self.proj(x))


def _window_and_shift(
    resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per axis: a window at least as large as the map shrinks to the map and is not shifted (timm)."""
    win = (min(resolution[0], window[0]), min(resolution[1], window[1]))
    sh = (0 if resolution[0] <= win[0] else shift[0], 0 if resolution[1] <= win[1] else shift[1])
    return win, sh


class SwinTransformerBlock(nn.Module):
    """(Shifted) window attention + MLP, pre-norm, on a (B, H, W, C) map."""

    attn_mask: torch.Tensor | None  # a buffer (register_buffer)

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int | tuple[int, int] = 7,
        shift: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.input_resolution = to_2tuple(input_resolution)
        target = to_2tuple(window_size)
        target_shift = (target[0] // 2, target[1] // 2) if shift else (0, 0)
        self.window_size, self.shift_size = _window_and_shift(self.input_resolution, target, target_shift)

        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, num_heads, self.window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

        hp, wp = self._padded(*self.input_resolution)
        self._mask_res = (hp, wp)
        mask = (
            shifted_window_mask(hp, wp, self.window_size, self.shift_size) if any(self.shift_size) else None
        )
        self.register_buffer("attn_mask", mask, persistent=False)  # (nW, N, N) or None
        self._mask_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def init_buffers(self) -> None:
        """Recompute the non-persistent buffers in place (after materialising a meta-device model)."""
        device = self.norm1.weight.device
        self.attn.relative_position_index = relative_position_index(*self.window_size, device=device)
        if self.attn_mask is not None:
            self.attn_mask = shifted_window_mask(*self._mask_res, self.window_size, self.shift_size, device)
        self._mask_cache.clear()

    def _padded(self, h: int, w: int) -> tuple[int, int]:
        wh, ww = self.window_size
        return math.ceil(h / wh) * wh, math.ceil(w / ww) * ww

    def get_attn_mask(self, hp: int, wp: int, device: torch.device) -> torch.Tensor | None:
        """(nW, N, N) shift mask for a padded (hp, wp) map; built once per size and device."""
        if not any(self.shift_size):
            return None
        if (hp, wp) == self._mask_res and self.attn_mask is not None and self.attn_mask.device == device:
            return self.attn_mask
        key = (hp, wp, device)
        mask = self._mask_cache.get(key)
        if mask is None:
            mask = shifted_window_mask(hp, wp, self.window_size, self.shift_size, device=device)
            self._mask_cache[key] = mask
        return mask

    def attn_bias(self, hp: int, wp: int, device: torch.device) -> torch.Tensor:
        """Relative position bias plus shift mask: (nW or 1, heads, N, N)."""
        bias = self.attn.relative_position_bias().unsqueeze(0)  # (1, heads, N, N)
        mask = self.get_attn_mask(hp, wp, device)
        if mask is not None:
            bias = bias + mask.unsqueeze(1).to(bias.dtype)  # (nW, heads, N, N)
        return bias

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, c = x.shape
        sh, sw = self.shift_size
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        # Pad bottom/right after the roll (timm order) so any map size splits into whole windows.
        hp, wp = self._padded(h, w)
        if hp != h or wp != w:
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        windows = window_partition(x, self.window_size)  # (B, nW, N, C)
        windows = self.attn(windows, attn_bias=self.attn_bias(hp, wp, x.device))  # (B, nW, N, C)
        x = window_reverse(windows, self.window_size, hp, wp)[:, :h, :w, :]  # (B, H, W, C)
        if sh or sw:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self._attn(self.norm1(x)))  # (B, H, W, C)
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def flops(self, h: int, w: int) -> int:
        hp, wp = self._padded(h, w)
        num_windows = (hp // self.window_size[0]) * (wp // self.window_size[1])
        # qkv/proj also run on the padding tokens, the MLP only on real ones.
        return num_windows * self.attn.flops(self.attn.window_area) + self.mlp.flops(h * w)


class PatchMerging(nn.Module):
    """2x2 neighbour concat (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C) -> LayerNorm -> Linear to 2C."""

    def __init__(self, dim: int, out_dim: int | None = None):
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # odd sizes: pad one zero row/column
        h, w = h + h % 2, w + w % 2
        # Channel order (x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]): column offset is the
        # slower index, as in the reference implementation, so pretrained reductions line up.
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)  # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))

    def flops(self, h: int, w: int) -> int:
        return 2 * ((h + 1) // 2) * ((w + 1) // 2) * 4 * self.dim * self.out_dim


class SwinStage(nn.Module):
    """Optional patch merging followed by blocks alternating regular and shifted windows."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        downsample: bool,
        num_heads: int,
        window_size: tuple[int, int],
        mlp_ratio: float,
        qkv_bias: bool,
        proj_drop: float,
        attn_drop: float,
        drop_path: list[float],
    ):
        super().__init__()
        self.input_resolution = input_resolution
        self.downsample: nn.Module
        if downsample:
            self.downsample = PatchMerging(dim, out_dim)
            self.output_resolution = ((input_resolution[0] + 1) // 2, (input_resolution[1] + 1) // 2)
        else:
            if dim != out_dim:
                raise ValueError("a stage without downsampling cannot change the width")
            self.downsample = nn.Identity()
            self.output_resolution = input_resolution
        self.blocks = nn.Sequential(
            *[
                SwinTransformerBlock(
                    out_dim,
                    self.output_resolution,
                    num_heads,
                    window_size=window_size,
                    shift=j % 2 == 1,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop,
                    attn_drop=attn_drop,
                    drop_path=drop_path[j],
                )
                for j in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))

    def swin_blocks(self) -> list[SwinTransformerBlock]:
        """``blocks``, typed: __init__ fills it with SwinTransformerBlocks only."""
        return cast("list[SwinTransformerBlock]", list(self.blocks))

    def flops(self, h: int, w: int) -> int:
        total = 0
        if isinstance(self.downsample, PatchMerging):
            total += self.downsample.flops(h, w)
            h, w = (h + 1) // 2, (w + 1) // 2
        return total + sum(blk.flops(h, w) for blk in self.swin_blocks())


class ClassifierHead(nn.Module):
    """Global average pool over tokens -> dropout -> Linear (``head.fc``, as in timm)."""

    def __init__(self, in_features: int, num_classes: int, global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ConfigError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.global_pool = global_pool
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))  # (B, H, W, C) -> (B, C)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)  # without pooling, fc acts per token as in timm


class SwinTransformer(ModelDefaults, nn.Module):
    """Swin Transformer classifier; defaults are Swin-T (swin_tiny_patch4_window7_224). A
    ``VitDistModel`` (``models.protocol``)."""

    classifier_prefixes = ("head.fc.",)

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int | tuple[int, int] = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        global_pool: str = "avg",
        proj_drop_rate: float = 0.0,
    ):
        """drop_rate is the classifier dropout and proj_drop_rate the dropout after attention / MLP
        projections, as in timm; attn_drop_rate drops attention probabilities."""
        super().__init__()
        if len(depths) != len(num_heads):
            raise ConfigError(f"depths {depths} and num_heads {num_heads} differ in length")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.window_size = to_2tuple(window_size)
        self.global_pool = global_pool
        self.num_layers = len(depths)
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm=True, flatten=False)
        dpr = drop_path_rates(drop_path_rate, sum(depths))  # linear over all blocks of all stages
        stages, res, dim = [], self.patch_embed.grid_size, embed_dim
        for i, depth in enumerate(depths):
            out_dim = int(embed_dim * 2**i)
            stage = SwinStage(
                dim,
                out_dim,
                res,
                depth,
                downsample=i > 0,
                num_heads=num_heads[i],
                window_size=self.window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
            )
            stages.append(stage)
            res, dim = stage.output_resolution, out_dim
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, global_pool, drop_rate)

        self.apply(init_linear_and_norm)  # tables were initialised by WindowAttention

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, H/p, W/p, C)
        x = self.layers(x)  # (B, H', W', num_features)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def stages(self) -> list[SwinStage]:
        """``layers``, typed: __init__ fills it with SwinStages only."""
        return cast("list[SwinStage]", list(self.layers))

    def transformer_blocks(self) -> list[nn.Module]:
        """Every SwinTransformerBlock in execution order (the units FSDP / checkpointing wrap)."""
        return [blk for stage in self.stages() for blk in stage.blocks]

    def init_non_persistent_buffers(self) -> None:
        """Rebuild index / mask buffers, e.g. after ``to_empty()`` on a model created on the meta device."""
        for stage in self.stages():
            for blk in stage.swin_blocks():
                blk.init_buffers()
        reset_drop_paths(self)

    def no_weight_decay(self) -> set[str]:
        return {"relative_position_bias_table"}

    def flops_per_image(self, img_size: int | tuple[int, int] | None = None, executed: bool = False) -> int:
        """Forward FLOPs (2 x MACs of the conv, linears and attention matmuls) for one image.
        (``executed`` is accepted for the shared API: Swin computes every token it counts.)"""
        h, w = to_2tuple(img_size if img_size is not None else self.img_size)
        total = self.patch_embed.flops(h, w)
        h, w = h // self.patch_embed.patch_size[0], w // self.patch_embed.patch_size[1]
        for stage in self.stages():
            total += stage.flops(h, w)
            if isinstance(stage.downsample, PatchMerging):
                h, w = (h + 1) // 2, (w + 1) // 2
        if isinstance(self.head.fc, nn.Linear):
            tokens = 1 if self.global_pool == "avg" else h * w
            total += 2 * tokens * self.head.fc.in_features * self.head.fc.out_features
        return int(total)

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a foreign Swin state dict (timm, or original Microsoft / timm < 0.9) onto this layout.

        Drops the non-persistent buffers, moves old end-of-stage patch merging to the start of the next
        stage and ``head.`` to ``head.fc.``, and bicubic-resizes relative position bias tables to this
        model's window sizes. Anything else (prefixes, wrong-size heads, missing keys) is left to the loader.
        """
        old_layout = "layers.0.downsample.reduction.weight" in sd
        own = {k: v.shape for k, v in self.state_dict().items()}
        out: dict[str, torch.Tensor] = {}
        for key, value in sd.items():
            if key.endswith(("relative_position_index", "attn_mask")):
                continue
            if old_layout:
                key = re.sub(
                    r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample.", key
                )
                if key.startswith("head.") and not key.startswith("head.fc."):
                    key = "head.fc." + key[len("head.") :]
            if key.endswith("relative_position_bias_table") and key in own and value.shape != own[key]:
                # Only a WindowAttention has a relative_position_bias_table.
                attn = cast(WindowAttention, self.get_submodule(key.rsplit(".", 1)[0]))
                value = _resize_bias_table(value, attn.window_size)
            out[key] = value
        return out


def _resize_bias_table(table: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """((2W-1)^2, heads) table of a square window -> ((2wh-1)*(2ww-1), heads), bicubic."""
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0]:
        raise CheckpointMismatchError(
            f"cannot resize a relative position table of non-square window, shape {table.shape}"
        )
    new = (2 * window[0] - 1, 2 * window[1] - 1)
    grid = resample_grid(table.reshape(side, side, table.shape[1]), new)
    return grid.reshape(new[0] * new[1], table.shape[1])


# Registered names (timm's) and the free-form family.
SWIN_SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


@register_model
def swin_tiny_patch4_window7_224() -> ModelSpec:
    return ModelSpec(SwinTransformer, dict(patch_size=4, window_size=7, **SWIN_SIZES["tiny"]))


@register_model
def swin_small_patch4_window7_224() -> ModelSpec:
    return ModelSpec(SwinTransformer, dict(patch_size=4, window_size=7, **SWIN_SIZES["small"]))


@register_model
def swin_base_patch4_window7_224() -> ModelSpec:
    return ModelSpec(SwinTransformer, dict(patch_size=4, window_size=7, **SWIN_SIZES["base"]))


@register_model
def swin_base_patch4_window12_384() -> ModelSpec:
    return ModelSpec(SwinTransformer, dict(img_size=384, patch_size=4, window_size=12, **SWIN_SIZES["base"]))


@register_family
def swin() -> ModelSpec:
    """Any Swin: every size keyword is the caller's (the defaults are small)."""
    return ModelSpec(
        SwinTransformer,
        dict(img_size=32, patch_size=2, embed_dim=48, depths=(2, 2), num_heads=(3, 6), window_size=4),
    )
