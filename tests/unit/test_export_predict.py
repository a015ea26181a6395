"""``vit_dist.export`` and ``vit_dist.predict`` on real checkpoints of short digits runs.

One single-process (DDP layout, with EMA) and one 2-process FSDP run of 6 steps are shared by
the module; the exported weights are checked against the checkpoint's own tensors (read
without the exporter's code path), against timm for a registered architecture, and through
the predict CLI on real digit images.
"""

from __future__ import annotations

import json

import pytest
import torch
from support.export_predict import _logits


@pytest.mark.parity
def test_write_weights_loads_into_timm(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    from vit_dist.checkpoint.weights import write_weights
    from vit_dist.models import create_model

    torch.manual_seed(0)
    ours = create_model("vit_tiny_patch16_224", num_classes=10).eval()
    out = write_weights(ours, tmp_path / "vit_tiny.safetensors", {"model_name": "vit_tiny_patch16_224"})
    assert json.loads(out.with_suffix(".json").read_text())["weights"] == "vit_tiny.safetensors"

    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    theirs.load_state_dict(load_file(out), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    assert (_logits(theirs, x) - _logits(ours, x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("module", ["export", "predict"])
def test_cli_user_mistakes_are_one_line(module, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"vit_dist.{module}").main
    image = ["x.jpg"] if module == "predict" else []
    cases = [
        ([f"checkpoint={tmp_path / 'missing'}", *image], 4, "checkpoint error: "),
        ([f"checkpoint={tmp_path}", *image], 4, "no complete checkpoint"),  # a directory, no run in it
        (["chekpoint=x", *image], 2, "unknown option 'chekpoint'"),
        (image, 2, "needs checkpoint=PATH"),
    ]
    for argv, code, text in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert text in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_evaluate_without_a_config_asks_for_what_it_needs_not_a_run_length(tmp_path, capsys):
    from vit_dist.evaluate import main

    assert main([f"checkpoint={tmp_path}", f"output_dir={tmp_path / 'eval'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "config error: data.val is not set: nothing to evaluate on", err
