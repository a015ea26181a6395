"""Parameter groups (no decay on norms/biases/tokens, layer-wise lr decay) and the lr schedule."""

from __future__ import annotations

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
    build_optimizer(groups, 1e-3, (0.9, 0.999), 1e-8, torch.device("cpu"))  # sets each group's lr
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
    opt_a = build_optimizer(param_groups(a, 0.05), 1e-2, (0.9, 0.999), 1e-8, torch.device("cpu"))
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
