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


def test_evaluate_rebuilds_the_model_and_preprocessing_from_the_checkpoint_alone(
    make_data_shards, tmp_path, capsys, caplog
):
    """No --config, no model keys, no data keys but data.val (and no loader workers): a run directory, its export, and an
    EMA checkpoint give exactly the training's own final evaluation (digits at 16 px, mean 0.5,
    crop_pct 1.0: none of it the defaults); a bare timm file still takes the config's model."""
    from helpers import CONFIG
    from support.train import TINY

    from vit_dist.core.config import load_config
    from vit_dist.evaluate import main
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    train = make_data_shards([40])
    val = make_data_shards([20], split="val", name="val")
    run = tmp_path / "run"
    overrides = [f"data.train={train}", f"data.val={val}", "data.workers=0", "train.steps=2"]
    overrides += ["logging.wandb=false", "ema.decay=0.5", f"output_dir={run}", *TINY[:-1]]
    Trainer(load_config(CONFIG, overrides), init_distributed()).fit()
    trained = json.loads((run / "eval.json").read_text())

    def evaluate(checkpoint, out, *extra):
        args = [
            f"checkpoint={checkpoint}",
            f"data.val={val}",
            "data.workers=0",
            f"output_dir={tmp_path / out}",
        ]
        code = main([*args, *extra])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return json.loads((tmp_path / out / "eval.json").read_text()), captured.out

    for checkpoint, out, ema in ((run, "e_run", ""), (run / "export" / "model.safetensors", "e_export", "")):
        got, _ = evaluate(checkpoint, out, *ema)
        assert got["num_samples"] == 20
        assert got["top1"] == trained["top1"] and abs(got["loss"] - trained["loss"]) < 1e-6, (got, trained)
    got, _ = evaluate(run, "e_ema", "ema=true")
    assert got["top1"] == trained["ema_top1"] and abs(got["loss"] - trained["ema_loss"]) < 1e-6
    assert got["weights"].startswith("EMA of vit from ")

    # A key given on the command line wins over the checkpoint's, with a note.
    caplog.set_level("INFO", logger="vit_dist.evaluate")
    got, _ = evaluate(run, "e_crop", "data.crop_pct=0.5", "model.depth=7")
    assert "note: data.crop_pct=0.5 (override; the checkpoint's: 1.0) is used" in caplog.text
    assert "note: the model is the checkpoint's (vit); model.* keys are not used" in caplog.text
    assert got["loss"] != trained["loss"]


def test_predict_takes_directories_recursively_sorted_and_writes_jsonl(tmp_path):
    """A directory gives its image files by extension, recursively, in path order; symlinks in
    it are not followed; an image-less directory and a broken image are error lines (and JSON
    records) while the rest is predicted."""
    import io
    import os

    from PIL import Image

    from vit_dist.predict import expand_images, predict

    root = tmp_path / "imgs"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    (tmp_path / "empty").mkdir()
    for rel in ("b/deep/z.PNG", "a/y.jpg", "x.png"):
        Image.new("RGB", (8, 8), (10, 200, 30)).save(
            root / rel, format="PNG" if rel.lower().endswith("png") else "JPEG"
        )
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    os.symlink(outside, root / "link.png")

    images = expand_images([str(root), str(tmp_path / "empty"), str(outside)])
    assert images == [
        *(str(root / rel) for rel in ("a/y.jpg", "b/deep/z.PNG", "broken.jpg", "x.png")),
        str(tmp_path / "empty"),
        str(outside),
    ]

    info = {"img_size": 8, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 3}
    info["classes"] = ["cat", "dog", "eel"]
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    jsonl, err = io.StringIO(), io.StringIO()
    failed = predict(lambda x: logits.expand(x.shape[0], 3), info, images, topk=2, err=err, jsonl=jsonl)
    records = [json.loads(line) for line in jsonl.getvalue().splitlines()]
    assert failed == 2 and [r["image"] for r in records] == images
    good = records[0]["top"]
    assert [(t["class"], t["index"]) for t in good] == [("dog", 1), ("eel", 2)]
    assert abs(good[0]["prob"] - logits.softmax(-1)[0, 1].item()) < 1e-6
    assert "cannot read image" in records[2]["error"] and "holds no image files" in records[4]["error"]
    lines = err.getvalue().splitlines()  # one line per unusable input, the empty directory once
    assert len(lines) == 2 and lines[1].startswith(f"error: {tmp_path / 'empty'} holds no image files"), lines
