"""Any timm classifier as ``model.name=timm:<name>``: the same losses as our ViT from the same
weights, FSDP per block on timm's Swin and ConvNeXt in 2 processes with an exact resume, the
blocks and layer-decay groups it gets, its checkpoints through evaluate / export, the model
list, and one line when timm is missing."""

from __future__ import annotations

import math
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from support.timm_models import SWIN, _config

from vit_dist.core.errors import ConfigError
from vit_dist.models import create_model, model_blocks
from vit_dist.training.optim import param_groups


def _names(model, modules) -> list[str]:
    by_id = {id(m): n for n, m in model.named_modules()}
    return [by_id[id(m)] for m in modules]


def test_blocks_found_in_timm_models():
    """What FSDP shards per unit and activation checkpointing recomputes: the residual blocks,
    also where a stage has one block; stems, patch merging and heads stay with the root."""
    with torch.device("meta"):
        vit = create_model("timm:vit_tiny_patch16_224", depth=3)
        swin = create_model("timm:swin_tiny_patch4_window7_224", depths=(1, 2, 1, 1))
        convnext = create_model("timm:convnext_atto")
        resnet = create_model("timm:resnet18")
    assert _names(vit, model_blocks(vit)) == ["blocks.0", "blocks.1", "blocks.2"]
    assert _names(swin, model_blocks(swin)) == [
        "layers.0.blocks.0",
        "layers.1.blocks.0",
        "layers.1.blocks.1",
        "layers.2.blocks.0",
        "layers.3.blocks.0",
    ]
    assert _names(convnext, model_blocks(convnext)) == [
        f"stages.{i}.blocks.{j}" for i, n in enumerate((2, 2, 6, 2)) for j in range(n)
    ]
    assert _names(resnet, model_blocks(resnet)) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    ours = create_model("vit", depth=2)
    assert model_blocks(ours) == ours.transformer_blocks()  # our models name their own


def test_parallelize_shards_and_checkpoints_each_timm_block(tmp_path):
    """In a gloo group of one: FSDP2 units on every block found and on the root (Swin's patch
    merging stays with the root), activation checkpointing on the blocks, and the same loss and
    gradients as the plain model. A raw timm model (no adapter) gets the same blocks."""
    import copy

    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    from vit_dist.core.config import ParallelSection
    from vit_dist.runtime.distributed import DistEnv
    from vit_dist.runtime.parallel import parallelize

    torch.manual_seed(0)
    kwargs = {k: v for k, v in SWIN.items() if k != "name"}
    model = create_model(SWIN["name"], **kwargs, img_size=32, num_classes=10)
    model.eval()  # no drop path: the two forwards must be comparable
    plain = copy.deepcopy(model)
    raw = timm.create_model("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), window_size=4, img_size=32)
    assert _names(raw, model_blocks(raw)) == _names(model, model_blocks(model))

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
        section = ParallelSection(strategy="fsdp", activation_checkpointing=True)
        sharded = parallelize(model, env, section, precision="fp32")
        blocks = model_blocks(sharded)
        assert len(blocks) == 4 and all(isinstance(b, FSDPModule) for b in blocks)
        assert isinstance(sharded, FSDPModule) and not isinstance(sharded.layers[1].downsample, FSDPModule)
        assert all("forward" in vars(b) for b in blocks)  # wrapped for recomputation
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
        loss = torch.nn.functional.cross_entropy(sharded(x), y)
        loss.backward()
        ref = torch.nn.functional.cross_entropy(plain(x), y)
        ref.backward()
        assert torch.allclose(loss, ref, rtol=1e-6, atol=1e-7)
        grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters()}
        for n, p in plain.named_parameters():
            assert torch.allclose(grads[n], p.grad, rtol=1e-5, atol=1e-7), n
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "name", ["timm:swin_tiny_patch4_window7_224", "timm:vit_tiny_patch16_224", "timm:convnext_atto"]
)
def test_weight_decay_and_layer_decay_groups_are_timms(name):
    """Per parameter, the same lr scale and weight decay as timm.optim.param_groups_layer_decay
    with the model's no_weight_decay() (ConvNeXt has none: 1-d parameters only)."""
    from timm.optim import param_groups_layer_decay

    model = create_model(name, num_classes=10, img_size=32, **({"window_size": 4} if "swin" in name else {}))
    ours = param_groups(model, 0.05, model.no_weight_decay(), 0.75, model_blocks(model))
    theirs = param_groups_layer_decay(model, 0.05, model.no_weight_decay(), layer_decay=0.75)
    by_param = lambda groups: {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    a, b = by_param(ours), by_param(theirs)
    assert a.keys() == b.keys() == {id(p) for p in model.parameters()}
    assert all(a[k][1] == b[k][1] and math.isclose(a[k][0], b[k][0]) for k in a)
    assert len({s for s, _ in a.values()}) > 3  # really decayed by layer


def test_timm_keywords_and_names_fail_in_one_line():
    with pytest.raises(ConfigError, match=r"has no option 'img_sise' \(did you mean 'img_size'\?\)"):
        create_model("timm:vit_tiny_patch16_224", img_sise=32)
    with pytest.raises(
        ConfigError, match=r"unknown timm model 'convnext_attoo' \(did you mean 'convnext_atto'\?\)"
    ):
        create_model("timm:convnext_attoo")
    with pytest.raises(ConfigError, match=r"cannot run on 3x16x16 input"):  # 4 stages of /2 after a /4 stem
        create_model("timm:convnext_atto", img_size=16)
    with pytest.raises(ConfigError, match="weights come from model.pretrained"):
        create_model("timm:convnext_atto", pretrained=True)
    with pytest.raises(ValueError, match=r"timm has it: model.name=timm:resnet18"):
        create_model("resnet18")
    # A conv net takes any input size: img_size is recorded (FLOPs), not passed to timm.
    small, large = (create_model("timm:convnext_atto", img_size=s) for s in (32, 64))
    assert small.model_kwargs["img_size"] == small.img_size == 32
    # 4x the pixels: 4x the FLOPs, but for the head after global pooling
    assert 3.9 * small.flops_per_image() < large.flops_per_image() < 4 * small.flops_per_image()
    # A plain name is ours, timm: is timm's.
    assert type(create_model("vit_tiny_patch16_224", depth=1)).__module__ == "vit_dist.models.vit"
    assert (
        type(create_model("timm:vit_tiny_patch16_224", depth=1)).__module__
        == "timm.models.vision_transformer"
    )


def test_models_list_shows_timm(capsys):
    from vit_dist.models.__main__ import main

    assert main(["list", "vit_tiny*"]) == 0
    out = capsys.readouterr().out
    assert f"timm: {len(timm.list_models())} more as timm:<name>" in out
    assert main(["list", "--timm", "convnext_at*"]) == 0
    out = capsys.readouterr().out
    assert "timm:convnext_atto " in out and "timm:convnext_atto_ols" in out
    row = next(line for line in out.splitlines() if line.startswith("timm:convnext_atto "))
    assert row.split()[1:] == ["3.7", "1.09"]  # M parameters, GFLOPs at 224 px: timm's published size
    assert main(["list", "--timm", "no_such_model*"]) == 2
    assert "no timm model matches" in capsys.readouterr().err


def test_missing_timm_is_one_config_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ConfigError) as e:
        create_model("timm:convnext_atto")
    assert str(e.value) == (
        "model.name=timm:convnext_atto needs timm, which is not installed: pip install vit_dist[timm]"
    )
    from vit_dist.models.__main__ import main as models_main
    from vit_dist.train import main as train_main

    assert models_main(["list", "vit_tiny*"]) == 0
    assert "timm: not installed (pip install vit_dist[timm]" in capsys.readouterr().out
    config = _config(tmp_path, {"name": "timm:convnext_atto"})
    assert train_main(["--config", config, f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "config error: model.name=timm:convnext_atto needs timm, which is not installed: pip install vit_dist[timm]"
    ]


def test_timm_weights_load_at_another_size_and_class_count(tmp_path):
    """model.pretrained for a timm model: timm's own checkpoint filter resizes the position
    embedding (224 px -> 32 px), and a classifier of another size is re-initialised."""
    from vit_dist.models import load_pretrained

    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", depth=2)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = create_model("timm:vit_tiny_patch16_224", depth=2, img_size=32, num_classes=10)
    report = load_pretrained(model, path)
    assert report.head_reinitialised == ["head"] and report.loaded == len(src.state_dict()) - 2
    assert model.pos_embed.shape == (1, 1 + 2 * 2, 192)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    assert torch.equal(model.pos_embed[:, 0], src.pos_embed[:, 0])  # the class token's, kept


def test_timm_teacher_builds_with_the_students_classes(tmp_path):
    """``distill.teacher=timm:<name>`` builds timm's model for the data's classes and loads
    timm-format teacher weights; a classifier of another size is refused, never re-initialised."""
    from types import SimpleNamespace

    from vit_dist.core.errors import CheckpointError
    from vit_dist.training.distill import build_teacher

    kw = {"patch_size": 4, "depth": 1, "embed_dim": 48, "num_heads": 3}
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=7, img_size=16, **kw)
    save_file(ref.state_dict(), str(tmp_path / "teacher.safetensors"))
    dcfg = SimpleNamespace(
        teacher="timm:vit_tiny_patch16_224",
        teacher_weights=str(tmp_path / "teacher.safetensors"),
        teacher_kwargs=kw,
    )
    teacher, source = build_teacher(dcfg, num_classes=7, img_size=16, in_chans=3)
    x = torch.randn(2, 3, 16, 16)
    ref.eval()
    torch.testing.assert_close(teacher(x), ref(x))
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(CheckpointError, match="teacher must predict"):
        build_teacher(dcfg, num_classes=5, img_size=16, in_chans=3)
