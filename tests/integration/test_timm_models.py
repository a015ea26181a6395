"""Any timm classifier as ``model.name=timm:<name>``: the same losses as our ViT from the same
weights, FSDP per block on timm's Swin and ConvNeXt in 2 processes with an exact resume, the
blocks and layer-decay groups it gets, its checkpoints through evaluate / export, the model
list, and one line when timm is missing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import assert_ok, read_jsonl, run_module
from safetensors.torch import save_file
from support.timm_models import SWIN, _config

from vit_dist.models import create_model

CONVNEXT = {"name": "timm:convnext_atto", "drop_path_rate": 0.1}


def _train(args, config, nproc=1, **env):
    return run_module("vit_dist.train", args, nproc, config=config, **env)


def _losses(out) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_jsonl(out / "metrics.jsonl")}


def test_timm_vit_trains_exactly_like_ours_from_the_same_weights(digits_data_dir, tmp_path):
    """10 steps of the trainer (same data order and seed, no dropout or drop path, clip_grad on)
    on our vit_tiny_patch16_224 and on timm's, both starting from one weights file. The two
    compute the same function with the same parameter names; they differ only in summation
    order (our last block attends from the class token alone), so the losses agree to float32
    rounding: measured equal for 5 steps, then at most 1.1e-7 apart (relative)."""
    shape = {"img_size": 16, "patch_size": 4, "depth": 2}
    torch.manual_seed(0)
    ours = create_model("vit_tiny_patch16_224", num_classes=10, **shape)
    weights = tmp_path / "init.safetensors"
    save_file({k: v.contiguous().clone() for k, v in ours.state_dict().items()}, str(weights))

    common = [
        f"data.train={digits_data_dir}",
        f"data.val={digits_data_dir}",  # a fresh clone has no data/digits
        "train.steps=10",
        "train.batch_size=16",
        "logging.every=1",
        "logging.wandb=false",
        "data.workers=1",
    ]
    losses, info = {}, {}
    for name in ("vit_tiny_patch16_224", "timm:vit_tiny_patch16_224"):
        model = {"name": name, "pretrained": str(weights), "drop_path_rate": 0.0, **shape}
        out = tmp_path / name.replace(":", "_")
        config = _config(tmp_path, model, name=f"{out.name}.yaml")
        assert_ok(_train([*common, f"output_dir={out}"], config))
        losses[name] = _losses(out)
        info[name] = json.loads((out / "run_info.json").read_text())
    a, b = losses["vit_tiny_patch16_224"], losses["timm:vit_tiny_patch16_224"]
    assert sorted(a) == sorted(b) == list(range(1, 11)), (a, b)
    for s in a:
        assert math.isclose(a[s], b[s], rel_tol=1e-5), (s, a, b)  # measured: equal, or 1e-7 apart
    assert len({round(v, 3) for v in a.values()}) >= 8, a  # ten different steps, not a constant curve
    # timm's FLOPs are counted (FlopCounterMode), ours analytic: the same architecture, the same count
    assert (
        info["timm:vit_tiny_patch16_224"]["flops_per_image"]
        == info["vit_tiny_patch16_224"]["flops_per_image"]
    )
    assert info["timm:vit_tiny_patch16_224"]["params_total"] == info["vit_tiny_patch16_224"]["params_total"]


def _fsdp_args(data, out, *extra):
    return [
        f"data.train={data}",
        f"data.val={data}",
        "train.steps=6",
        "train.batch_size=16",
        "checkpoint.every=3",
        "logging.every=1",
        "eval.every=0",
        "ema.decay=0.9",
        "data.workers=1",
        "parallel.strategy=fsdp",
        f"output_dir={out}",
        *extra,
    ]


def _assert_sharded(out) -> None:
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["sharded"] is True
    total, local = info["params_total"], info["params_local_per_rank"]
    assert all(n < 0.6 * total for n in local), (local, total)  # each rank holds about half


@pytest.mark.slow
@pytest.mark.multiproc
def test_fsdp_timm_swin_two_processes_resume_exactly(digits_data_dir, tmp_path):
    """FSDP2 per block (timm's layers.*.blocks.*) with activation checkpointing, EMA and drop
    path; killed after the step-3 checkpoint and resumed: the same losses and evaluation."""
    config = _config(tmp_path, SWIN, img_size=32)
    extra = ["parallel.activation_checkpointing=true", "logging.wandb=false"]
    ref = tmp_path / "ref"
    assert_ok(_train(_fsdp_args(digits_data_dir, ref, *extra), config, nproc=2))
    _assert_sharded(ref)
    losses = _losses(ref)
    assert sorted(losses) == list(range(1, 7)) and all(math.isfinite(v) for v in losses.values())

    killed = tmp_path / "killed"
    proc = _train(_fsdp_args(digits_data_dir, killed, *extra), config, nproc=2, VIT_DIST_FAULT="kill@4")
    assert proc.returncode != 0 and max(_losses(killed)) == 4
    proc = _train(_fsdp_args(digits_data_dir, killed, *extra, "resume=auto"), config, nproc=2)
    assert_ok(proc)
    assert "step-00000003" in proc.stdout + proc.stderr
    got = _losses(killed)
    assert sorted(got) == sorted(losses)
    for s in losses:
        assert abs(got[s] - losses[s]) <= 1e-6, (s, losses, got)
    ea, eb = (json.loads((d / "eval.json").read_text()) for d in (ref, killed))
    for k in ("top1", "loss", "ema_top1", "ema_loss"):
        assert abs(ea[k] - eb[k]) <= 1e-6, (k, ea, eb)
    meta = json.loads((ref / "checkpoints" / "step-00000006" / "meta.json").read_text())
    assert meta["model_name"] == SWIN["name"] and meta["model_kwargs"]["depths"] == [1, 1, 1, 1]


@pytest.mark.slow
@pytest.mark.multiproc
def test_fsdp_timm_convnext_two_processes_then_evaluate_and_export(digits_data_dir, tmp_path):
    """FSDP2 on timm's ConvNeXt (stages.*.blocks.*) with W&B (offline); its sharded checkpoint
    rebuilds timm:convnext_atto in one process for evaluate and export, with the same result."""
    from vit_dist.checkpoint.weights import export_checkpoint, load_checkpoint_model, load_export

    config = _config(tmp_path, CONVNEXT, img_size=32)
    out = tmp_path / "run"
    assert_ok(_train(_fsdp_args(digits_data_dir, out), config, nproc=2))
    _assert_sharded(out)
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 7)) and all(math.isfinite(v) for v in losses.values())
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run directory"
    trained = json.loads((out / "eval.json").read_text())

    ev = tmp_path / "eval"
    evaluate = [f"data.val={digits_data_dir}", f"checkpoint={out}", f"output_dir={ev}"]
    assert_ok(run_module("vit_dist.evaluate", evaluate, config=config))
    got = json.loads((ev / "eval.json").read_text())
    assert abs(got["top1"] - trained["top1"]) < 1e-9 and got["num_samples"] == 360

    model, info = load_checkpoint_model(out)
    assert type(model).__name__ == "TimmConvNeXt" and info["model_name"] == "timm:convnext_atto"
    exported = export_checkpoint(out, tmp_path / "export" / "model.safetensors")
    again, again_info = load_export(exported)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again_info["model_kwargs"] == {
        "drop_path_rate": 0.1,
        "num_classes": 10,
        "img_size": 32,
        "in_chans": 3,
    }
