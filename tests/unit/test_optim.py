"""Parameter groups (no decay on norms/biases/tokens, layer-wise lr decay) and the lr schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from vit_dist.models import create_model
from vit_dist.training.optim import (
    Schedule,
    build_optimizer,
    build_scheduler,
    layer_ids,
    lr_factor,
    param_groups,
)


def _group_of(groups, name):
    return next(g for g in groups if name in g["names"])


def test_no_weight_decay_on_norms_biases_tokens_and_tables():
    vit = create_model("deit_distilled", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    groups = param_groups(vit, 0.05, vit.no_weight_decay())
    for name in ("pos_embed", "cls_token", "dist_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"):
        assert _group_of(groups, name)["weight_decay"] == 0.0, name
    for name in ("blocks.0.attn.qkv.weight", "head.weight", "patch_embed.proj.weight"):
        assert _group_of(groups, name)["weight_decay"] == 0.05, name
    swin = create_model("swin", img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4))
    g = param_groups(swin, 0.05, swin.no_weight_decay())
    assert _group_of(g, "layers.0.blocks.0.attn.relative_position_bias_table")["weight_decay"] == 0.0
    assert sum(len(x["params"]) for x in g) == len(list(swin.parameters()))


def test_layer_ids_vit_and_swin():
    vit = create_model("vit", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2)
    ids, n = layer_ids(vit, vit.transformer_blocks())
    assert n == 5
    assert ids["patch_embed.proj.weight"] == ids["cls_token"] == ids["pos_embed"] == 0
    assert [ids[f"blocks.{i}.mlp.fc1.weight"] for i in range(3)] == [1, 2, 3]
    assert ids["head.weight"] == ids["norm.weight"] == 4
    swin = create_model("swin", img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4))
    ids, n = layer_ids(swin, swin.transformer_blocks())
    assert ids["patch_embed.proj.weight"] == 0
    assert ids["layers.1.downsample.reduction.weight"] == ids["layers.1.blocks.0.attn.qkv.weight"] == 3
    assert ids["head.fc.weight"] == 5 == n - 1


def test_layer_decay_scales_lr():
    vit = create_model("vit", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2)
    groups = param_groups(vit, 0.05, vit.no_weight_decay(), layer_decay=0.5, blocks=vit.transformer_blocks())
    build_optimizer(groups, 1e-3, torch.device("cpu"))  # sets each group's lr
    by_name = {n: g["lr"] for g in groups for n in g["names"]}
    assert by_name["head.weight"] == pytest.approx(1e-3)
    assert by_name["blocks.2.attn.qkv.weight"] == pytest.approx(0.5e-3)
    assert by_name["blocks.0.attn.qkv.weight"] == pytest.approx(0.125e-3)
    assert by_name["pos_embed"] == pytest.approx(0.0625e-3)


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)
    vals = [lr_factor(s, 100, 10, 0.0) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # monotone after warmup
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p], "lr": 2.0}], lr=2.0)
    sched = build_scheduler(opt, Schedule(100, 10, 0.0))
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(0.2) and max(seen) == pytest.approx(2.0)
    assert seen[55] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_a_reanchored_schedule_continues_without_a_jump_and_ends_on_time():
    sched = Schedule(total=100, warmup=10, min_ratio=0.0)
    assert [sched(s) for s in range(101)] == [lr_factor(s, 100, 10, 0.0) for s in range(101)]
    # Resumed at step 30 with twice as many steps per epoch: 140 steps left instead of 70.
    before = sched(30)
    sched.reanchor(30, 170)
    assert sched(30) == pytest.approx(before) and sched.last_step == 170
    assert sched.position(100) == pytest.approx(65.0) and sched(170) == pytest.approx(0.0)
    vals = [sched(s) for s in range(30, 171)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # no step back into warmup or up the cosine
    # Resumed again (at step 100) with fewer steps per epoch: still continuous.
    before = sched(100)
    sched.reanchor(100, 120)
    assert sched(100) == pytest.approx(before) and sched.position(120) == pytest.approx(100.0)


def test_adamw_is_fused_on_cpu_and_matches_the_reference_step():
    # The pinned torch has a fused CPU AdamW (3x faster than for-each on 2 cores); it must be
    # chosen, and must take the same step as torch's reference for-loop implementation.
    from vit_dist.training.optim import fused_available

    assert fused_available("cpu")
    torch.manual_seed(0)
    a = nn.Linear(16, 8)
    b = nn.Linear(16, 8)
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer(param_groups(a, 0.05), 1e-2, torch.device("cpu"))
    assert opt_a.defaults["fused"] is True
    opt_b = torch.optim.AdamW(
        [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in param_groups(b, 0.05)],
        lr=1e-2,
        foreach=False,
    )
    for _ in range(3):
        x = torch.randn(4, 16)
        for m, opt in ((a, opt_a), (b, opt_b)):
            m(x).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- optim.name: sgd, lamb


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))


def _steps(model: nn.Module, opt, n: int = 5, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(8, 12, generator=g)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def test_lamb_takes_timms_steps():
    """Ours against timm's Lamb with in-optimizer clipping off (optim.clip_grad clips here),
    on a decay group (trust ratio) and a no-decay group (plain Adam update) over 5 steps."""
    from timm.optim import Lamb as TimmLamb

    ours, ref = _net(), _net()
    opt = build_optimizer(param_groups(ours, 0.05), 2e-2, torch.device("cpu"), name="lamb", eps=1e-6)
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in param_groups(ref, 0.05)]
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
    timm_opt = TimmLamb(groups, lr=2e-2, eps=1e-6, max_grad_norm=None)
    _steps(ours, opt)
    _steps(ref, timm_opt)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    moved = [not torch.equal(a, b) for a, b in zip(ours.parameters(), _net().parameters())]
    assert all(moved)
    assert set(opt.state[next(ours.parameters())]) == {"step", "exp_avg", "exp_avg_sq"}  # AdamW's layout


def test_sgd_is_timms_sgd_nesterov_momentum_with_l2_decay():
    from timm.optim import create_optimizer_v2

    ours, ref = _net(), _net()
    opt = build_optimizer(param_groups(ours, 1e-4), 0.1, torch.device("cpu"), name="sgd", momentum=0.9)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    timm_opt = create_optimizer_v2(ref, "sgd", lr=0.1, weight_decay=1e-4, momentum=0.9)
    _steps(ours, opt)
    _steps(ref, timm_opt)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    plain = build_optimizer(param_groups(_net(), 0.0), 0.1, torch.device("cpu"), name="sgd", nesterov=False)
    assert plain.defaults["nesterov"] is False


@pytest.mark.parametrize("name", ["adamw", "sgd", "lamb"])
def test_each_optimizer_resumes_exactly_from_its_state_dict(name):
    a = _net()
    opt = build_optimizer(param_groups(a, 0.05), 1e-2, torch.device("cpu"), name=name)
    _steps(a, opt, n=3)
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(opt.state_dict())
    _steps(a, opt, n=3, seed=7)

    b = _net(seed=5)
    b.load_state_dict(saved_model)
    opt_b = build_optimizer(param_groups(b, 0.05), 1e-2, torch.device("cpu"), name=name)
    opt_b.load_state_dict(saved_opt)
    _steps(b, opt_b, n=3, seed=7)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", ["sgd", "lamb"])
def test_sgd_and_lamb_under_fsdp_take_the_unsharded_steps(group_of_one, name):
    """FSDP2 parameters are DTensors: LAMB's norms (the trust ratio) and SGD's momentum must
    give the plain model's steps."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    plain, sharded = _net(), _net()
    fully_shard(sharded, mesh=init_device_mesh("cpu", (1,)))
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    opts = [
        build_optimizer(param_groups(m, 0.05), 1e-2, torch.device("cpu"), name=name) for m in (plain, sharded)
    ]
    _steps(plain, opts[0])
    _steps(sharded, opts[1])
    for a, b in zip(plain.parameters(), sharded.parameters()):
        torch.testing.assert_close(a, b.full_tensor(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- optim.schedule, warmup_lr, cooldown


def test_linear_step_and_constant_schedules_after_warmup():
    lin = [lr_factor(s, 110, 10, 0.1, kind="linear") for s in range(10, 111)]
    assert lin[0] == pytest.approx(1.0) and lin[50] == pytest.approx(0.55) and lin[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lin, lin[1:]))
    # step, as timm's StepLRScheduler: x decay_rate at every multiple of decay_every, from step 0.
    step = {s: lr_factor(s, 100, 5, 0.0, kind="step", decay_every=30, decay_rate=0.1) for s in range(100)}
    assert step[4] == pytest.approx(1.0) and step[29] == 1.0 and step[30] == pytest.approx(0.1)
    assert (
        step[59] == pytest.approx(0.1) and step[60] == pytest.approx(0.01) and step[99] == pytest.approx(1e-3)
    )
    assert {lr_factor(s, 100, 5, 0.0, kind="constant") for s in range(5, 100)} == {1.0}


def test_warmup_starts_from_warmup_lr_and_the_cooldown_holds_min_lr():
    # warmup_lr = 0.1 x lr; 10 warmup steps; 20 cooldown steps of 100.
    f = [lr_factor(s, 100, 10, 0.01, warmup_ratio=0.1, cooldown=20) for s in range(100)]
    assert f[0] == pytest.approx(0.1 + 0.9 / 10) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:10], f[1:10]))
    assert f[10] == pytest.approx(1.0) and f[79] > 0.01 and f[80:] == [0.01] * 20
    # The cosine decays over steps 10..80 instead of 10..100.
    assert f[45] == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)  # warmup_lr 0: as before
    sched = Schedule(100, 10, 0.01, kind="linear", warmup_ratio=0.1, cooldown=20)
    assert [sched(s) for s in range(100)] == [
        lr_factor(s, 100, 10, 0.01, kind="linear", warmup_ratio=0.1, cooldown=20) for s in range(100)
    ]
