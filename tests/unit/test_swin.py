"""Swin Transformer: shapes, gradients, timm parity, window masks, caching, checkpoint adaptation, FLOPs."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vit_dist.models import swin
from vit_dist.models.layers import resample_grid
from vit_dist.models.swin import SwinTransformer, SwinTransformerBlock

timm = pytest.importorskip("timm")
from timm.models import swin_transformer as timm_swin  # noqa: E402

SMALL = dict(img_size=32, patch_size=2, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=4)
# Free-form: non-square, window 6 does not divide 20/28/10/14 (padding), stage 2 is 5x7 so the window
# shrinks to 5 rows with no vertical shift but keeps a horizontal one, stage 3 (3x4) has no shift at all.
FREE = dict(
    img_size=(40, 56),
    patch_size=2,
    embed_dim=16,
    depths=(2, 2, 2, 2),
    num_heads=(2, 4, 8, 8),
    window_size=6,
    num_classes=10,
)


@pytest.fixture(scope="module")
def timm_tiny():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    return SwinTransformer().eval()


def _old_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm >= 0.9 layout -> original Microsoft layout (merging at the end of the previous stage)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", k)
        out[k.replace("head.fc.", "head.")] = v
    return out


# ---------------------------------------------------------------- 1. forward / backward


def _check_all_grads(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_small_forward_backward_shapes_and_grads():
    torch.manual_seed(0)
    model = SwinTransformer(**SMALL, num_classes=10, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 8, 8, 48)
    assert model.num_features == 48
    logits = model.forward_head(feats)
    assert logits.shape == (2, 10)
    logits.square().mean().backward()
    _check_all_grads(model)


def test_headless_and_unpooled():
    x = torch.randn(2, 3, 32, 32)
    model = SwinTransformer(**SMALL, num_classes=0).eval()
    assert isinstance(model.head.fc, torch.nn.Identity)
    assert model(x).shape == (2, 48)
    model = SwinTransformer(**SMALL, num_classes=0, global_pool="").eval()
    assert model(x).shape == (2, 8, 8, 48)


def test_tiny_forward_backward(tiny):
    x = torch.randn(1, 3, 224, 224)
    tiny.zero_grad(set_to_none=True)
    logits = tiny(x)  # eval mode: stochastic depth off, so every block gets a gradient
    assert logits.shape == (1, 1000)
    logits.logsumexp(-1).sum().backward()
    _check_all_grads(tiny)
    tiny.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- 2. parity with timm


def test_tiny_parity_with_timm_checkpoint(timm_tiny, tiny, tmp_path):
    path = tmp_path / "swin_tiny.pth"
    torch.save(timm_tiny.state_dict(), path)
    tiny.load_state_dict(tiny.adapt_state_dict(torch.load(path, weights_only=True)))  # strict
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref_feats, feats = timm_tiny.forward_features(x), tiny.forward_features(x)
        ref, out = timm_tiny.forward_head(ref_feats), tiny.forward_head(feats)
    # random-init logits are small, so also compare the unit-scale (post-norm) features
    assert (ref_feats - feats).abs().max().item() <= 1e-4
    assert (ref - out).abs().max().item() <= 1e-4


def test_free_form_parity_with_timm():
    torch.manual_seed(0)
    ref = timm_swin.SwinTransformer(**FREE).eval()
    model = SwinTransformer(**FREE).eval()
    blocks = model.transformer_blocks()
    assert [b.window_size for b in blocks[4:]] == [(5, 6), (5, 6), (3, 4), (3, 4)]
    assert [b.shift_size for b in blocks] == [(0, 0), (3, 3)] * 2 + [(0, 0), (0, 3), (0, 0), (0, 0)]
    model.load_state_dict(model.adapt_state_dict(ref.state_dict()))
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        assert (ref.forward_features(x) - model.forward_features(x)).abs().max().item() <= 1e-4
        assert (ref(x) - model(x)).abs().max().item() <= 1e-5


def test_free_form_training_gradients_match_timm():
    # Training mode: the same loss gives every parameter timm's gradient (the masked window
    # attention goes through SDPA, whose fully-masked-row guard must not change timm's math).
    torch.manual_seed(0)
    ref = timm_swin.SwinTransformer(**FREE, drop_path_rate=0.0).train()  # no randomness in training
    model = SwinTransformer(**FREE, drop_path_rate=0.0).train()
    model.load_state_dict(model.adapt_state_dict(ref.state_dict()))
    x = torch.randn(2, 3, 40, 56)
    weights = torch.randn(2, FREE["num_classes"])
    (ref(x) * weights).sum().backward()
    (model(x) * weights).sum().backward()
    theirs = {k: p.grad for k, p in model.adapt_state_dict(dict(ref.named_parameters())).items()}
    ours = dict(model.named_parameters())
    assert ours.keys() == theirs.keys()
    for k, p in ours.items():
        scale = theirs[k].abs().max().item()
        torch.testing.assert_close(p.grad, theirs[k], rtol=1e-4, atol=1e-5 * scale + 1e-7, msg=k)


def test_other_input_size_parity_with_timm_dynamic():
    """A size other than the configured one (cached masks) matches timm's per-forward masks."""
    torch.manual_seed(0)
    ref = timm_swin.SwinTransformer(**FREE, strict_img_size=False).eval()
    model = SwinTransformer(**FREE).eval()
    model.load_state_dict(model.adapt_state_dict(ref.state_dict()))
    for hw in [(44, 36), (64, 64)]:
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            assert (ref.forward_features(x) - model.forward_features(x)).abs().max().item() <= 1e-4, hw


def test_old_layout_conversion(timm_tiny, tiny):
    sd = timm_tiny.state_dict()
    old = _old_layout(sd)
    assert "layers.0.downsample.reduction.weight" in old and "head.weight" in old
    old["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    old["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    new = tiny.adapt_state_dict(old)
    assert set(new) == set(sd)
    for k, v in sd.items():
        assert torch.equal(new[k], v), k
    # new-layout dicts pass through unchanged, minus the buffers
    assert set(tiny.adapt_state_dict({**sd, "layers.1.blocks.1.attn_mask": torch.zeros(1)})) == set(sd)


# ---------------------------------------------------------------- 3. size and names


def test_tiny_param_count_keys_and_config(timm_tiny, tiny):
    assert sum(p.numel() for p in tiny.parameters()) == 28_288_354
    ours = {k: tuple(v.shape) for k, v in tiny.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in timm_tiny.state_dict().items()}
    assert ours == theirs
    assert all(k in ours for k in ("layers.1.downsample.reduction.weight", "head.fc.weight"))
    assert not any(k.startswith("layers.0.downsample") for k in ours)
    assert [k for k in ours if k.startswith(tiny.classifier_prefixes)] == ["head.fc.weight", "head.fc.bias"]
    assert tiny.no_weight_decay() == {"relative_position_bias_table"}
    blocks = tiny.transformer_blocks()
    assert len(blocks) == 12 and all(isinstance(b, SwinTransformerBlock) for b in blocks)
    rates = [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0 for b in blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 12).tolist())
    assert (tiny.num_classes, tiny.num_features, tiny.img_size, tiny.in_chans) == (1000, 768, 224, 3)


def test_init():
    torch.manual_seed(0)
    model = SwinTransformer(**SMALL, num_classes=10)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert 0.015 < m.weight.std().item() < 0.025, name
            assert m.weight.abs().max().item() <= 0.04 + 1e-6, name  # truncated at 2 std
            assert m.bias is None or not m.bias.any(), name
        elif isinstance(m, torch.nn.LayerNorm):
            assert (m.weight == 1).all() and not m.bias.any(), name
    table = model.layers[1].blocks[0].attn.relative_position_bias_table
    assert 0.01 < table.std().item() < 0.03


# ---------------------------------------------------------------- 4./5. window attention


def _region(r: int, size: int, window: int, shift: int) -> int:
    return 0 if r < size - window else (1 if r < size - shift else 2)


def test_shift_mask_blocks_attention_across_windows():
    torch.manual_seed(0)
    size, window, shift, dim = 8, 4, 2, 16
    block = SwinTransformerBlock(dim, (size, size), num_heads=2, window_size=window, shift=True).eval()
    assert block.shift_size == (shift, shift)
    x = torch.randn(1, size, size, dim)
    # rolled position (7, 7) is original (1, 1): bottom-right shifted window, wrapped region in both axes
    p = (1, 1)
    x2 = x.clone()
    x2[0, p[0], p[1]] += 3.0 * torch.randn(dim)  # not a constant: LayerNorm would remove it

    def key(i, j):  # (window, region) of an original token in the rolled image
        ri, rj = (i - shift) % size, (j - shift) % size
        return (
            ri // window,
            rj // window,
            _region(ri, size, window, shift),
            _region(rj, size, window, shift),
        )

    same = torch.tensor([[key(i, j) == key(*p) for j in range(size)] for i in range(size)])
    assert same.sum() == 4 and same[:2, :2].all()  # originals (0..1, 0..1)

    with torch.no_grad():
        diff = (block(x2) - block(x)).abs().amax(-1)[0]  # (H, W)
    assert diff[~same].max().item() <= 1e-6
    assert diff[same].min().item() > 1e-3

    block.attn_mask = torch.zeros_like(block.attn_mask)  # no mask: wrapped tokens now see the far border
    with torch.no_grad():
        leak = (block(x2) - block(x)).abs().amax(-1)[0]
    assert leak[~same].max().item() > 1e-3


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_naive_formula(shifted):
    torch.manual_seed(0)
    size, window, heads, dim = 8, 4, 2, 16
    shift = window // 2 if shifted else 0
    block = SwinTransformerBlock(dim, (size, size), num_heads=heads, window_size=window, shift=shifted).eval()
    attn = block.attn
    x = torch.randn(2, size, size, dim)
    with torch.no_grad():
        out = block._attn(x)
        xr = torch.roll(x, (-shift, -shift), dims=(1, 2))
        ref = torch.zeros_like(xr)
        d = dim // heads
        for wy in range(size // window):
            for wx in range(size // window):
                pos = [(wy * window + i, wx * window + j) for i in range(window) for j in range(window)]
                n = len(pos)
                tok = torch.stack([xr[:, y, z] for y, z in pos], 1)  # (B, N, C)
                q, k, v = (tok @ attn.qkv.weight.T + attn.qkv.bias).view(2, n, 3, heads, d).unbind(2)
                bias = torch.zeros(heads, n, n)
                for a, (ya, za) in enumerate(pos):
                    for b, (yb, zb) in enumerate(pos):
                        idx = (ya - yb + window - 1) * (2 * window - 1) + (za - zb + window - 1)
                        bias[:, a, b] = attn.relative_position_bias_table[idx]
                        ra = (_region(ya, size, window, shift), _region(za, size, window, shift))
                        rb = (_region(yb, size, window, shift), _region(zb, size, window, shift))
                        if shifted and ra != rb:
                            bias[:, a, b] = float("-inf")
                logits = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d) + bias
                o = torch.einsum("bhij,bjhd->bihd", logits.softmax(-1), v).reshape(2, n, dim)
                o = o @ attn.proj.weight.T + attn.proj.bias
                for t, (y, z) in enumerate(pos):
                    ref[:, y, z] = o[:, t]
        ref = torch.roll(ref, (shift, shift), dims=(1, 2))
    assert (out - ref).abs().max().item() <= 1e-5


# ---------------------------------------------------------------- 6. computed once


def test_masks_and_indices_built_once(monkeypatch):
    calls = {"mask": 0, "index": 0}
    mask_fn, index_fn = swin.shifted_window_mask, swin.relative_position_index

    def count_mask(*a, **kw):
        calls["mask"] += 1
        return mask_fn(*a, **kw)

    def count_index(*a, **kw):
        calls["index"] += 1
        return index_fn(*a, **kw)

    monkeypatch.setattr(swin, "shifted_window_mask", count_mask)
    monkeypatch.setattr(swin, "relative_position_index", count_index)
    model = SwinTransformer(
        img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4
    )
    assert calls == {"mask": 2, "index": 4}  # two shifted blocks, four blocks
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(1, 3, 32, 32))
        assert calls == {"mask": 2, "index": 4}
        for _ in range(3):
            model(torch.randn(1, 3, 48, 48))
        assert calls == {"mask": 4, "index": 4}  # once per shifted block for the new size, then cached
        model(torch.randn(1, 3, 32, 32))
        assert calls == {"mask": 4, "index": 4}


def test_buffers_rebuilt_after_meta_init():
    ref = SwinTransformer(**FREE)
    with torch.device("meta"):
        model = SwinTransformer(**FREE)
    model.to_empty(device="cpu")
    model.init_non_persistent_buffers()
    buffers = dict(ref.named_buffers())
    assert buffers and set(buffers) == set(dict(model.named_buffers()))
    for name, buf in model.named_buffers():
        assert torch.equal(buf, buffers[name]), name


# ---------------------------------------------------------------- 7. window resize


def test_adapt_resizes_relative_position_tables():
    kw = dict(img_size=64, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_classes=10)
    src = SwinTransformer(**kw, window_size=7)
    dst = SwinTransformer(**kw, window_size=12)
    sd = src.state_dict()
    key = "layers.1.blocks.1.attn.relative_position_bias_table"
    assert sd[key].shape == (13 * 13, 4)
    adapted = dst.adapt_state_dict(sd)
    assert adapted[key].shape == (23 * 23, 4)
    assert torch.allclose(adapted[key], resample_grid(sd[key].view(13, 13, 4), (23, 23)).view(-1, 4))
    dst.load_state_dict(adapted)  # strict
    assert torch.equal(dst.layers[1].blocks[1].attn.relative_position_bias_table, adapted[key])
    assert dst(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    # same window: tables pass through untouched
    assert src.adapt_state_dict(sd)[key] is sd[key]


# ---------------------------------------------------------------- 8. FLOPs


def test_flops_tiny_matches_published(tiny):
    flops = tiny.flops_per_image()
    assert abs(flops - 2 * 4.5e9) / (2 * 4.5e9) < 0.02, flops / 2e9  # 4.49 GMACs


def test_flops_match_flop_counter():
    torch.manual_seed(0)
    model = SwinTransformer(**FREE).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 40, 56))
    counts = counter.get_flop_counts()["Global"]
    assert counts.get(torch.ops.aten.bmm, 0) > 0  # the math path's attention matmuls were counted
    assert abs(model.flops_per_image() - counter.get_total_flops()) <= 0.01 * counter.get_total_flops()


@pytest.mark.parametrize(("precision", "tol"), [("bf16", 0.03), ("fp16", 0.005)])
def test_low_precision_gradients_stay_close_to_fp32(precision, tol):
    # Shifted windows (a 16x16 grid in windows of 4) put -inf shift masks and the
    # relative-position bias through autocast: the masked softmax must stay finite and close.
    from vit_dist.runtime.precision import autocast

    torch.manual_seed(0)
    model = SwinTransformer(
        img_size=32,
        patch_size=2,
        window_size=4,
        embed_dim=24,
        depths=(2, 2),
        num_heads=(2, 4),
        num_classes=10,
        drop_path_rate=0.0,
    )
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))

    def grads(prec):
        model.zero_grad()
        with autocast(torch.device("cpu"), prec):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    (ref_loss, ref), (loss, got) = grads("fp32"), grads(precision)
    assert torch.isfinite(got).all()
    assert abs(loss - ref_loss) < tol
    assert (got - ref).norm() / ref.norm() < tol
