"""Building blocks shared by ViT, DeiT and Swin.

Parameter names follow timm (``proj``, ``qkv``, ``fc1``/``fc2``, ``norm1``/``norm2``, ``gamma``)
so that timm checkpoints load without renaming. Attention goes through
``F.scaled_dot_product_attention`` so that CUDA picks the flash / memory-efficient kernels.
Nothing here knows about processes, devices or precision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ConfigError(f"expected an int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


def trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Truncated normal at +-2 std, the init used by ViT/DeiT/Swin reference code.

    Inverse-CDF sampling (uniform over [cdf(-2), cdf(2)] -> erfinv): exact and one pass over the
    tensor, where torch's rejection loop takes several and dominates building a large model.
    """
    lo, hi = (1.0 + math.erf(-2.0 / math.sqrt(2.0))) / 2.0, (1.0 + math.erf(2.0 / math.sqrt(2.0))) / 2.0
    with torch.no_grad():
        t.uniform_(2.0 * lo - 1.0, 2.0 * hi - 1.0)
        t.erfinv_()
        t.mul_(std * math.sqrt(2.0))
        t.clamp_(min=-2.0 * std, max=2.0 * std)
    return t


def init_linear_and_norm(m: nn.Module) -> None:
    """Paper init for a module tree: Linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class PatchEmbed(nn.Module):
    """Non-overlapping conv patch embedding: (B, C, H, W) -> (B, N, D) or (B, H', W', D)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm: bool = False,
        flatten: bool = True,
    ):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        for s, p in zip(self.img_size, self.patch_size):
            if s % p:
                raise ConfigError(
                    f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}"
                )
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.flatten = flatten
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ConfigError(f"input {h}x{w} is not divisible by patch size {self.patch_size}")
        x = self.proj(x)  # (B, D, H', W')
        x = x.flatten(2).transpose(1, 2) if self.flatten else x.permute(0, 2, 3, 1)  # (B, N, D) | NHWC
        return self.norm(x)

    def flops(self, h: int | None = None, w: int | None = None) -> int:
        h = h or self.img_size[0]
        w = w or self.img_size[1]
        n = (h // self.patch_size[0]) * (w // self.patch_size[1])
        k = self.in_chans * self.patch_size[0] * self.patch_size[1]
        return 2 * n * k * self.embed_dim


class Attention(nn.Module):
    """Multi-head self-attention. ``attn_bias`` is an additive float mask broadcast to (B, heads, N, N)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, attn_bias: torch.Tensor | None = None, n_query: int | None = None
    ) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); with ``n_query``, only the first ``n_query`` tokens attend
        (to all N) and the output is (B, n_query, C): the same values as the full output's first
        rows, without computing the rows nobody reads."""
        b, n, c = x.shape
        if n_query is None:
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        else:
            w, bias = self.qkv.weight, self.qkv.bias  # rows: q, k, v (timm's fused layout)
            q = F.linear(x[:, :n_query], w[:c], None if bias is None else bias[:c])
            q = q.reshape(b, n_query, self.num_heads, self.head_dim).transpose(1, 2)
            kv = F.linear(x, w[c:], None if bias is None else bias[c:])
            k, v = kv.reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            if attn_bias is not None:
                attn_bias = attn_bias[..., :n_query, :]
            n = n_query
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)  # SDPA wants the mask in the query dtype under autocast
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))

    def flops(self, n: int, n_query: int | None = None) -> int:
        """Forward FLOPs (2 x MACs) for one sequence of n tokens (``n_query`` of them attending)."""
        c = self.num_heads * self.head_dim
        nq = n if n_query is None else n_query
        return 2 * (nq * c * c + n * c * 2 * c + 2 * nq * n * c + nq * c * c)


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))

    def flops(self, n: int) -> int:
        return 2 * 2 * n * self.fc1.in_features * self.fc1.out_features


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample, rescale the kept ones by 1/keep.

    The rate lives in a 0-d buffer and ``forward`` reads only the boolean ``active``: torch.compile
    specialises on Python floats, so a float rate (different in every block, linear in depth) would
    compile one graph per block and hit dynamo's recompile limit, leaving the deeper blocks eager.
    With the tensor, every block of one shape shares a single compiled graph.
    """

    keep_prob: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ConfigError(f"drop path rate must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)  # for repr and callers; forward does not read it
        self.active = drop_prob > 0.0
        self.register_buffer("keep_prob", torch.tensor(1.0 - drop_prob), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active or not self.training:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        # bernoulli_ (not rand < p): inductor keeps it on the eager random stream, so compiled and
        # eager training draw the same masks from the same seed.
        mask = torch.empty(shape, device=x.device).bernoulli_(self.keep_prob)
        return x * (mask / self.keep_prob).to(x.dtype)

    def reset_buffers(self) -> None:
        """Refill ``keep_prob`` (after ``to_empty()`` on a meta-device model)."""
        with torch.no_grad():
            self.keep_prob.fill_(1.0 - self.drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def reset_drop_paths(model: nn.Module) -> None:
    """``reset_buffers`` on every DropPath of ``model`` (its rates after ``to_empty()``)."""
    for m in model.modules():
        if isinstance(m, DropPath):
            m.reset_buffers()


class LayerScale(nn.Module):
    """Per-channel residual scale (CaiT / DeiT III); named ``gamma`` as in timm."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Stochastic depth rate rising linearly from 0 at the first block to the set rate at the last."""
    if depth <= 1:
        return [drop_path_rate] * depth
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


def resample_grid(t: torch.Tensor, new_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a (H, W, C) table to (new_h, new_w, C), computed in fp32."""
    orig_dtype = t.dtype
    x = t.float().permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)
    x = F.interpolate(x, size=new_hw, mode="bicubic", align_corners=False, antialias=True)
    return x.squeeze(0).permute(1, 2, 0).to(orig_dtype)


def resample_abs_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int, old_grid=None
) -> torch.Tensor:
    """Interpolate a (1, prefix + H*W, D) learned position embedding to a new patch grid.

    The prefix (cls / distillation) token embeddings are kept as they are.
    """
    n_old = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(math.isqrt(n_old))
        if side * side != n_old:
            raise ValueError(f"cannot infer a square grid from {n_old} position embeddings")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    grid = resample_grid(grid.reshape(old_grid[0], old_grid[1], -1), new_grid)
    return torch.cat([prefix, grid.reshape(1, new_grid[0] * new_grid[1], -1)], dim=1)
