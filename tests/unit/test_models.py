"""Every registered model builds, runs forward + backward, has timm's parameter count and FLOPs.

The per-model tests run over the registry (``list_models()``): a new family's names are tested
here without an edit; its own test file checks what is particular to it."""

from __future__ import annotations

import pytest
import torch

from vit_dist.models import (
    DistilledVisionTransformer,
    SwinTransformer,
    count_flops,
    create_model,
    flops_per_image,
    list_families,
    list_models,
)
from vit_dist.models.layers import DropPath

# What vit.py, deit.py and swin.py register (a snapshot: renaming one fails here). A family in
# another module is not listed: its names come from the registry like every other's.
FAMILY_MODULES = ("vit_dist.models.vit", "vit_dist.models.deit", "vit_dist.models.swin")
EXPECTED_NAMES = {
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_large_patch16_224",
    "vit_base_patch32_224",
    "vit_base_patch16_384",
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_base_distilled_patch16_224",
    "deit3_small_patch16_224",
    "deit3_base_patch16_224",
    "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
    "swin_base_patch4_window7_224",
    "swin_base_patch4_window12_384",
}


def test_registry_has_timm_names():
    ours = {n for module in FAMILY_MODULES for n in list_models(module=module)}
    assert ours == EXPECTED_NAMES and ours <= set(list_models())
    assert list_models("swin*") == sorted(n for n in EXPECTED_NAMES if n.startswith("swin"))
    assert {f for module in FAMILY_MODULES for f in list_families(module=module)} == {
        "vit",
        "deit_distilled",
        "swin",
    }
    assert list_models(module="vit_dist.models.deit") == sorted(
        n for n in EXPECTED_NAMES if n.startswith("deit")
    )


def _reduced_size(name: str) -> int:
    # Large models at reduced resolution keep the test fast; patch and window structure is unchanged.
    if name.startswith("swin"):
        return 192 if "window12" in name else 112
    return 32


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_model(name):
    torch.manual_seed(0)
    model = create_model(name, img_size=_reduced_size(name), num_classes=7)
    model.train()
    x = torch.randn(2, 3, model.img_size, model.img_size)
    out = model(x)
    if isinstance(model, DistilledVisionTransformer):
        assert isinstance(out, tuple) and len(out) == 2
        assert out[0].shape == out[1].shape == (2, 7)
        loss = out[0].logsumexp(-1).mean() + out[1].logsumexp(-1).mean()
    else:
        assert out.shape == (2, 7)
        loss = out.logsumexp(-1).mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7)


def _param_count(build) -> int:
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parity
@pytest.mark.parametrize("name", list_models())
def test_param_count_equals_timm(name):
    timm = pytest.importorskip("timm")
    ours = _param_count(lambda: create_model(name))
    theirs = _param_count(lambda: timm.create_model(name, pretrained=False))
    assert ours == theirs


@pytest.mark.parametrize(
    "name,millions",
    [
        ("vit_base_patch16_224", 86.6),
        ("deit_small_patch16_224", 22.1),
        ("swin_tiny_patch4_window7_224", 28.3),
    ],
)
def test_param_count_published(name, millions):
    assert round(_param_count(lambda: create_model(name)) / 1e6, 1) == millions


@pytest.mark.parametrize(
    "name,gmacs",
    [("vit_base_patch16_224", 17.6), ("deit_small_patch16_224", 4.6), ("swin_tiny_patch4_window7_224", 4.5)],
)
def test_flops_match_timm_published_gmacs(name, gmacs):
    with torch.device("meta"):
        model = create_model(name)
    got = flops_per_image(model) / 2e9  # FLOPs -> GMACs
    assert abs(got - gmacs) / gmacs < 0.02, f"{name}: {got:.3f} GMACs vs timm's {gmacs}"


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vit", dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=10)),
        ("vit", dict(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, global_pool="avg")),
        (
            "deit_distilled",
            dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=10),
        ),
        (
            "swin",
            dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4),
        ),
    ],
)
def test_analytic_flops_equal_counted(name, kwargs):
    model = create_model(name, **kwargs)
    analytic, counted = flops_per_image(model, executed=True), count_flops(model)
    assert abs(analytic - counted) / counted < 0.01, (analytic, counted)
    if name != "swin" and kwargs.get("global_pool", "token") == "token":
        # the last block computes the prefix tokens only: fewer FLOPs than the architecture's count
        assert counted < 0.99 * flops_per_image(model)


@pytest.mark.parametrize("name", ["vit", "deit_distilled"])
def test_last_block_on_prefix_tokens_only_gives_the_same_logits_and_gradients(name):
    # forward() runs the last block for the class (and distillation) token only; the logits and
    # every parameter's gradient must equal the full computation's (all tokens, then pool).
    torch.manual_seed(0)
    model = create_model(
        name, img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=5, init_values=0.5
    )
    x = torch.randn(4, 3, 32, 32)

    def loss_and_grads(full: bool):
        model.zero_grad()
        out = model.forward_head(model.forward_features(x)) if full else model(x)
        out = torch.stack(out) if isinstance(out, tuple) else out
        (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
        return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    out_full, grads_full = loss_and_grads(full=True)
    out_cut, grads_cut = loss_and_grads(full=False)
    torch.testing.assert_close(out_cut, out_full, rtol=1e-5, atol=1e-5)
    assert grads_cut.keys() == grads_full.keys()
    for k in grads_full:
        scale = grads_full[k].abs().max().item()  # fp32 summation order differs: relative to the largest
        torch.testing.assert_close(grads_cut[k], grads_full[k], rtol=1e-4, atol=1e-5 * scale, msg=k)
    assert model.forward_features(x).shape[1] == 16 + model.num_prefix_tokens  # features stay whole


def test_free_form_sizes_and_bad_keywords():
    m = create_model(
        "vit", img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2
    )
    assert m(torch.randn(3, 1, 16, 16)).shape == (3, 10)
    s = create_model(
        "swin", img_size=32, in_chans=1, depths=(2, 2), num_heads=(2, 4), embed_dim=16, num_classes=4
    )
    assert isinstance(s, SwinTransformer) and s(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="did you mean 'depth'"):
        create_model("vit", dpeth=3)
    with pytest.raises(ValueError, match="did you mean 'vit_base_patch16_224'"):
        create_model("vit_base_patch16_244")
    with pytest.raises(ValueError, match="not divisible"):
        create_model("vit", img_size=30, patch_size=4)


def test_global_avg_pool_uses_patch_tokens_and_fc_norm():
    torch.manual_seed(0)
    m = create_model(
        "vit", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, global_pool="avg"
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    feats = m.forward_features(x)  # (B, 1 + 16, D)
    expected = m.head(m.fc_norm(feats[:, 1:].mean(1)))
    torch.testing.assert_close(m(x), expected)
    assert "fc_norm.weight" in m.state_dict() and "norm.weight" not in m.state_dict()


def test_vit_other_input_size_interpolates_position_embedding():
    m = create_model(
        "vit", img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=5
    ).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 48, 48)).shape == (2, 5)


def test_drop_path_train_vs_eval():
    torch.manual_seed(0)
    dp = DropPath(0.5)
    x = torch.ones(4000, 3)
    dp.train()
    y = dp(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.45 < kept < 0.55  # about half the samples dropped ...
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 2.0))  # ... the rest rescaled by 1/keep
    assert ((y == 0).all(1) | (y != 0).all(1)).all()  # whole samples, not elements
    dp.eval()
    assert torch.equal(dp(x), x)

    m = create_model("vit", img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, drop_path_rate=0.5)
    x = torch.randn(8, 3, 16, 16)
    m.train()
    assert not torch.allclose(m(x), m(x))  # stochastic in training
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x))  # deterministic in eval
    rates = [blk.drop_path1.drop_prob for blk in m.blocks]
    assert rates[0] == 0.0 and rates[-1] == 0.5 and rates == sorted(rates)


def test_deit_heads_train_tuple_eval_mean():
    torch.manual_seed(0)
    m = create_model(
        "deit_distilled", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=6
    )
    x = torch.randn(3, 3, 16, 16)
    m.train()
    cls_logits, dist_logits = m(x)
    assert not torch.allclose(cls_logits, dist_logits)  # two different heads on two different tokens
    m.eval()
    with torch.no_grad():
        feats = m.forward_features(x)
        expected = (m.head(feats[:, 0]) + m.head_dist(feats[:, 1])) / 2
        torch.testing.assert_close(m(x), expected)
    with pytest.raises(ValueError, match="global_pool"):
        create_model("deit_distilled", global_pool="avg")


def test_init_follows_papers():
    torch.manual_seed(0)
    m = create_model("vit_small_patch16_224", num_classes=10)
    w = m.blocks[0].mlp.fc1.weight
    # trunc normal(0.02) cut at 2 std: std 0.02 * 0.8796, nothing beyond 0.04
    assert abs(w.std().item() - 0.02 * 0.8796) < 0.0005 and w.abs().max().item() <= 0.04 + 1e-6
    assert torch.count_nonzero(m.blocks[0].attn.qkv.bias) == 0
    assert m.cls_token.std().item() < 1e-5
    assert abs(m.pos_embed.std().item() - 0.02 * 0.8796) < 0.001
    assert torch.equal(m.norm.weight, torch.ones_like(m.norm.weight))


def test_vit_drop_path_rates_rebuilt_after_meta_init():
    kw = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, drop_path_rate=0.2)
    ref = create_model("vit", **kw)
    with torch.device("meta"):
        model = create_model("vit", **kw)
    model.to_empty(device="cpu")
    model.init_non_persistent_buffers()
    expected = dict(ref.named_buffers())
    assert expected and set(expected) == set(dict(model.named_buffers()))
    for name, buf in model.named_buffers():
        assert torch.equal(buf, expected[name]), name
