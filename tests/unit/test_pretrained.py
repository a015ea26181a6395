"""timm weight interop: a timm model's weights, saved to a file, give the same logits in ours."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from vit_dist.models import CheckpointMismatchError, create_model, load_pretrained, read_state_dict
from vit_dist.models.layers import resample_abs_pos_embed

timm = pytest.importorskip("timm")

PARITY = [
    # (our name, timm name, image size): one ViT, one DeiT distilled, one DeiT III, one Swin, at their
    # native sizes.
    ("vit_tiny_patch16_224", "vit_tiny_patch16_224", 224),
    ("deit_tiny_distilled_patch16_224", "deit_tiny_distilled_patch16_224", 224),
    ("deit3_small_patch16_224", "deit3_small_patch16_224", 224),  # LayerScale, patch-only positions
    ("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224", 224),
]


def _timm_model(name, **kw):
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False, **kw).eval()


@pytest.mark.parity
@pytest.mark.parametrize("ours_name,timm_name,size", PARITY)
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_weights_give_timm_logits(tmp_path, ours_name, timm_name, size, fmt):
    ref = _timm_model(timm_name)
    with torch.no_grad():  # LayerScale starts at 1e-6, where the blocks hardly count: make them count
        for name, p in ref.named_parameters():
            if name.endswith((".ls1.gamma", ".ls2.gamma")):
                p.uniform_(0.5, 1.5)
    path = tmp_path / f"w.{fmt}"
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if fmt == "pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    ours = create_model(ours_name)
    report = load_pretrained(ours, path)
    assert report.loaded == len(ours.state_dict()) and not report.head_reinitialised
    ours.eval()
    torch.manual_seed(2)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    assert diff <= 1e-4, f"{ours_name}: max abs logit diff {diff}"


def test_wrapped_and_prefixed_state_dicts(tmp_path):
    ref = create_model("vit", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    sd = {f"module._orig_mod.{k}": v for k, v in ref.state_dict().items()}
    for wrapper in ("model", "state_dict"):
        torch.save({wrapper: sd, "epoch": 3}, tmp_path / f"{wrapper}.pth")
        ours = create_model(
            "vit", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3
        )
        load_pretrained(ours, tmp_path / f"{wrapper}.pth")
        for k, v in ref.state_dict().items():
            assert torch.equal(ours.state_dict()[k], v), k


def test_head_reinitialised_when_num_classes_differs(tmp_path):
    ref = _timm_model("deit_tiny_distilled_patch16_224")
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = create_model("deit_tiny_distilled_patch16_224", num_classes=10)
    head_before = ours.head.weight.clone()
    report = load_pretrained(ours, tmp_path / "w.pth")
    assert report.head_reinitialised == ["head", "head_dist"]
    assert "num_classes=10" in str(report) and "1000" in str(report)
    assert torch.equal(ours.head.weight, head_before)  # fresh head kept
    assert torch.equal(ours.blocks[3].mlp.fc2.weight, ref.blocks[3].mlp.fc2.weight)  # body loaded
    assert torch.equal(ours.dist_token, ref.dist_token)


def test_position_embedding_interpolated_like_timm(tmp_path):
    ref = _timm_model("vit_tiny_patch16_224")
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = create_model("vit_tiny_patch16_224", img_size=160)  # 14x14 grid -> 10x10
    load_pretrained(ours, tmp_path / "w.pth")
    assert ours.pos_embed.shape == (1, 1 + 100, 192)
    expected = timm.layers.resample_abs_pos_embed(ref.pos_embed, (10, 10), num_prefix_tokens=1)
    torch.testing.assert_close(ours.pos_embed.detach(), expected.detach(), atol=1e-5, rtol=1e-4)
    assert torch.equal(ours.pos_embed[:, 0], ref.pos_embed[:, 0])  # class token's embedding untouched
    # and the model runs at its new size
    with torch.no_grad():
        assert ours.eval()(torch.randn(1, 3, 160, 160)).shape == (1, 1000)


def test_resample_same_grid_is_identity_and_smooth_fields_stay_smooth():
    pe = torch.randn(1, 1 + 64, 8)
    assert resample_abs_pos_embed(pe, (8, 8), 1) is pe
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 8), torch.linspace(0, 1, 8), indexing="ij")
    field = torch.stack([xs, ys], -1).reshape(1, 64, 2)
    up = resample_abs_pos_embed(torch.cat([torch.zeros(1, 1, 2), field], 1), (16, 16), 1)
    assert up.shape == (1, 257, 2)
    grid = up[0, 1:].reshape(16, 16, 2)
    assert (grid[:, 1:, 0] >= grid[:, :-1, 0] - 1e-4).all()  # still increasing along x


def test_swin_window7_weights_into_window12_model(tmp_path):
    ref = _timm_model("swin_tiny_patch4_window7_224")
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = create_model("swin_tiny_patch4_window7_224", img_size=384, window_size=12)
    load_pretrained(ours, tmp_path / "w.pth")
    table = ours.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (23 * 23, 3)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    torch.save(_timm_model("vit_tiny_patch16_224").state_dict(), tmp_path / "vit_tiny.pth")
    with pytest.raises(CheckpointMismatchError, match=r"mis-shaped \d+: .*blocks\.0\.attn\.qkv\.weight"):
        load_pretrained(create_model("vit_small_patch16_224"), tmp_path / "vit_tiny.pth")
    with pytest.raises(CheckpointMismatchError, match=r"missing \d+: .*unexpected \d+: .*blocks\.0"):
        load_pretrained(create_model("swin_tiny_patch4_window7_224"), tmp_path / "vit_tiny.pth")
    with pytest.raises(CheckpointMismatchError, match="dist_token"):
        load_pretrained(create_model("deit_tiny_distilled_patch16_224"), tmp_path / "vit_tiny.pth")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def test_loading_never_executes_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil()}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(CheckpointMismatchError, match="not a weights-only checkpoint"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointMismatchError):
        read_state_dict(tmp_path / "garbage.pth")
