"""``hf-hub:ORG/NAME[@REVISION]`` weights (vit_dist.core.hub), never touching the network.

Each test builds a real huggingface_hub cache in a temporary HF_HOME (``hub/models--ORG--NAME``
with ``blobs/``, ``snapshots/<commit>/`` symlinks and ``refs/<branch>``) holding a tiny timm
ViT written here by timm itself, and runs with HF_HUB_OFFLINE=1 and HF_ENDPOINT at a closed
local port. The hub's own answers (no such repository / revision / file, gated) come from a
local HTTP server that speaks the hub's error headers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from safetensors.torch import save_file
from support.hub import (
    ARCH,
    COMMIT_A,
    COMMIT_B,
    DIGITS,
    ORG,
    digit_png,
)

from vit_dist.core.errors import EXIT_CHECKPOINT, EXIT_CONFIG, KINDS, CheckpointError, ConfigError


def local_model(sd: dict[str, torch.Tensor], tmp: Path, num_classes: int = 10):
    """Our model with the same weights loaded from a local file: the reference."""
    from vit_dist.models import create_model, load_pretrained

    save_file(sd, str(tmp / "local.safetensors"))
    model = create_model("vit_tiny_patch16_224", num_classes=num_classes, **ARCH)
    load_pretrained(model, tmp / "local.safetensors")
    return model.eval()


# ----------------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    "value", ["hf-hub:timm", "hf-hub:/x", "hf-hub:a/b/c", "hf-hub:a/b@", "hf-hub:a--b/c", "hf-hub:a/b c"]
)
def test_malformed_references_are_config_errors_naming_the_key(value):
    from vit_dist.core.config import load_config

    with pytest.raises(ConfigError, match=r"model\.pretrained=.*expected hf-hub:ORG/NAME") as e:
        load_config(None, ["train.steps=1", f"model.pretrained={value}"])
    assert "\n" not in str(e.value)


def test_references_parse_with_and_without_a_revision():
    from vit_dist.core.config import load_config
    from vit_dist.core.hub import HubRef, parse_ref

    assert parse_ref("hf-hub:timm/vit_base_patch16_224.augreg_in21k") == HubRef(
        "timm/vit_base_patch16_224.augreg_in21k", None
    )
    assert parse_ref("hf-hub:o/n@refs/pr/1") == HubRef("o/n", "refs/pr/1")
    assert str(parse_ref("hf-hub:o/n@v2")) == "hf-hub:o/n@v2"
    cfg = load_config(None, ["train.steps=1", "distill.type=soft", "distill.teacher_weights=hf-hub:o/n@v2"])
    assert cfg.distill.teacher_weights == "hf-hub:o/n@v2"


# ------------------------------------------------------------------------------ predict, loading


def test_predict_from_the_hub_alone_matches_the_same_weights_loaded_locally(hub, weights, capsys):
    from vit_dist.checkpoint.weights import load_model
    from vit_dist.predict import main

    model, info = load_model(f"hf-hub:{ORG}/tiny-vit")
    assert info["model_name"] == "vit_tiny_patch16_224" and info["num_classes"] == 10
    assert info["classes"] == DIGITS
    assert (info["img_size"], info["mean"], info["std"], info["crop_pct"]) == (32, [0.5] * 3, [0.5] * 3, 0.9)
    assert info["source"] == f"hf-hub:{ORG}/tiny-vit@{COMMIT_A}"  # pinned to the commit read

    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = model(x)
        want = local_model(weights["a"], hub["tmp"])(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    import timm  # and timm's own model on the same weights agrees

    ref = timm.create_model("vit_tiny_patch16_224", num_classes=10, **ARCH).eval()
    ref.load_state_dict(weights["a"])
    with torch.no_grad():
        torch.testing.assert_close(got, ref(x), rtol=1e-4, atol=1e-4)

    # the command line, with no config: class names from config.json's label_names
    image = digit_png(hub["tmp"] / "digit.png")
    assert main([f"checkpoint=hf-hub:{ORG}/tiny-vit", str(image), "topk=3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(image) and len(out) == 4
    assert all(line.split()[1] in DIGITS for line in out[1:]), out
    from vit_dist.predict import Preprocess

    with torch.no_grad():
        logits = local_model(weights["a"], hub["tmp"])(Preprocess(info)(image.read_bytes()))
    want_probs = logits.softmax(-1)[0]
    top = want_probs.argmax().item()
    assert out[1].split()[1] == DIGITS[top] and f"{want_probs[top].item():.4f}" in out[1]


def test_a_revision_picks_its_commit(hub, weights):
    from vit_dist.checkpoint.weights import load_model

    x = torch.randn(1, 3, 32, 32)
    for ref, key, commit in (
        (f"hf-hub:{ORG}/tiny-vit", "a", COMMIT_A),
        (f"hf-hub:{ORG}/tiny-vit@v2", "b", COMMIT_B),  # a branch (refs/v2)
        (f"hf-hub:{ORG}/tiny-vit@{COMMIT_A}", "a", COMMIT_A),  # a commit hash
        (f"hf-hub:{ORG}/tiny-vit@{COMMIT_B}", "b", COMMIT_B),
    ):
        model, info = load_model(ref)
        assert info["source"] == f"hf-hub:{ORG}/tiny-vit@{commit}"
        with torch.no_grad():
            torch.testing.assert_close(model(x), local_model(weights[key], hub["tmp"])(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="not in the hub cache .* HF_HUB_OFFLINE is set"):
        load_model(f"hf-hub:{ORG}/tiny-vit@nope")


def test_pytorch_model_bin_is_the_fallback(hub, weights):
    from vit_dist.checkpoint.weights import load_model

    model, info = load_model(f"hf-hub:{ORG}/tiny-vit-bin")
    assert info["classes"] is None  # no label_names: predict prints indices
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), local_model(weights["a"], hub["tmp"])(x), rtol=0, atol=0)


def test_an_architecture_only_timm_has_is_built_by_timm(hub, weights):
    import timm  # the reference model

    from vit_dist.checkpoint.weights import load_model

    model, info = load_model(f"hf-hub:{ORG}/convnext")
    assert info["model_name"] == "timm:test_convnext" and info["classes"] is None
    ref = timm.create_model("test_convnext", num_classes=10).eval()
    ref.load_state_dict(weights["convnext"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_offline_failures_are_one_checkpoint_error(hub):
    from vit_dist.checkpoint.weights import load_model

    cases = {
        f"hf-hub:{ORG}/never-downloaded": "config.json is not in the hub cache",
        f"hf-hub:{ORG}/no-weights": "model.safetensors (nor pytorch_model.bin) is not in the hub cache",
        f"hf-hub:{ORG}/unknown": "architecture 'not_a_model_anywhere' is neither a vit_dist model nor a "
        "timm one; we have: deit3_base_patch16_224, deit3_small_patch16_224, deit_",
    }
    for ref, expected in cases.items():
        with pytest.raises(CheckpointError) as e:
            load_model(ref)
        assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="ema=true applies to training checkpoints"):
        load_model(f"hf-hub:{ORG}/tiny-vit", ema=True)


# ------------------------------------------------------------------------ the hub's own answers


def test_exit_codes_of_the_kinds_used():
    kind = lambda e: next((name, c) for types, name, c in KINDS if isinstance(e, types))
    assert kind(CheckpointError("x")) == ("checkpoint error", EXIT_CHECKPOINT)
    assert kind(ConfigError("x")) == ("config error", EXIT_CONFIG)


# ---------------------------------------------------------------- evaluate, fine-tune, distill


def test_a_hub_teacher_must_predict_the_data_classes(hub, weights):
    from vit_dist.core.config import load_config
    from vit_dist.training.distill import build_teacher

    cfg = load_config(
        None, ["train.steps=1", "distill.type=soft", f"distill.teacher_weights=hf-hub:{ORG}/tiny-vit-in5"]
    )
    with pytest.raises(CheckpointError, match="the teacher predicts 5 classes, the data has 10"):
        build_teacher(cfg.distill, 10, 32, 3)
    cfg = load_config(
        None, ["train.steps=1", "distill.type=soft", f"distill.teacher_weights=hf-hub:{ORG}/tiny-vit@v2"]
    )
    teacher, source = build_teacher(cfg.distill, 10, 48, 3)
    assert source.startswith(f"loaded {len(weights['b'])} tensors from hf-hub:{ORG}/tiny-vit@{COMMIT_B}")
    assert teacher.input_stats == ([0.5] * 3, [0.5] * 3) and teacher.pos_embed.shape == (1, 10, 192)

    # the student's batch (its own mean/std) reaches the teacher in the teacher's statistics
    from vit_dist.runtime.distributed import DistEnv
    from vit_dist.training.distill import frozen_teacher

    cpu = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    cfg = load_config(
        None,
        ["train.steps=1", "data.img_size=48", "data.mean=[0.4,0.4,0.4]", "data.std=[0.3,0.3,0.3]"]
        + ["distill.type=soft", f"distill.teacher_weights=hf-hub:{ORG}/tiny-vit"],
    )
    frozen = frozen_teacher(cfg.distill, cfg.data, cfg.precision, 10, cpu, fsdp=False)
    pixels = torch.rand(2, 3, 48, 48)
    student_input = (pixels - 0.4) / 0.3
    torch.testing.assert_close(frozen.renorm(student_input), (pixels - 0.5) / 0.5, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ the recipe


def test_the_fine_tuning_recipe_loads():
    from vit_dist.core.config import load_config

    cfg = load_config(str(ROOT / "configs" / "finetune_vit_base_in21k.yaml"), [])
    assert cfg.model.name == "vit_base_patch16_224"
    assert cfg.model.pretrained == "hf-hub:timm/vit_base_patch16_224.augreg_in21k"
    assert cfg.optim.layer_decay is not None and cfg.optim.lr < 5e-4
    assert cfg.augment.mixup == 0 and cfg.augment.cutmix == 0
    assert cfg.data.mean == [0.5, 0.5, 0.5] and cfg.data.std == [0.5, 0.5, 0.5]  # the in21k weights' stats


def test_preprocessing_differences_name_what_differs_from_the_weights():
    """A fine-tune from hub weights with other mean/std or resize filter is warned about."""
    from vit_dist.core.hub import parse_config, preprocessing_differences

    hc = parse_config(
        {
            "architecture": "vit_base_patch16_224",
            "num_classes": 10,
            "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"},
        }
    )
    assert preprocessing_differences(hc, [0.5] * 3, [0.5] * 3, "bicubic") == []
    diffs = preprocessing_differences(hc, [0.485, 0.456, 0.406], [0.5] * 3, "bilinear")
    assert diffs == [
        "data.mean=[0.485, 0.456, 0.406] (the weights': [0.5, 0.5, 0.5])",
        "data.interpolation=bilinear (the weights': bicubic)",
    ]
    lanczos = parse_config(
        {"architecture": "vit_base_patch16_224", "pretrained_cfg": {"interpolation": "lanczos"}}
    )
    assert not any(
        "interpolation" in d for d in preprocessing_differences(lanczos, [0.5] * 3, [0.5] * 3, "bilinear")
    )


def test_evaluate_from_the_hub_alone_takes_model_classes_and_preprocessing_from_config_json(
    hub, make_data_shards, tmp_path, capsys
):
    """No --config: the architecture, 10 classes (checked against the data's names: 'zero' in
    config.json's label_names, '0' in the data's, so mapped by a file) and the 32 px / mean 0.5
    / crop 0.9 preprocessing of config.json."""
    from vit_dist.evaluate import main

    val = make_data_shards([20], split="val", name="val")
    table = tmp_path / "names.json"
    table.write_text(json.dumps({str(i): name for i, name in enumerate(DIGITS)}))
    args = [f"checkpoint=hf-hub:{ORG}/tiny-vit", f"data.val={val}", "data.workers=0"]
    assert main([*args, f"output_dir={tmp_path / 'refused'}"]) == 3
    assert "class 0 is '0' where 'zero' is expected" in capsys.readouterr().err
    args.append(f"data.val_class_map={table}")
    assert main([*args, f"output_dir={tmp_path / 'e'}"]) == 0, capsys.readouterr().err
    got = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert got["num_samples"] == 20
    assert got["weights"] == f"vit_tiny_patch16_224 from hf-hub:{ORG}/tiny-vit@{COMMIT_A}"
    # The same with config.json's preprocessing stated by hand: the same numbers.
    same = ["data.img_size=32", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]", "data.crop_pct=0.9"]
    assert main([*args, *same, f"output_dir={tmp_path / 'f'}"]) == 0
    stated = json.loads((tmp_path / "f" / "eval.json").read_text())
    assert (stated["top1"], stated["loss"]) == (got["top1"], got["loss"])


def test_predict_a_directory_into_a_jsonl_file(hub, capsys, tmp_path):
    """`predict checkpoint=... DIR --out preds.jsonl`: every image of DIR, one record each."""
    from vit_dist.predict import main

    images = tmp_path / "digits"
    images.mkdir()
    for name in ("b.png", "a.png"):
        digit_png(images / name)
    out = tmp_path / "preds.jsonl"
    assert main([f"checkpoint=hf-hub:{ORG}/tiny-vit", str(images), "--out", str(out), "topk=3"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [f"wrote 2 predictions (0 failed) to {out}"]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in records] == [str(images / "a.png"), str(images / "b.png")]
    assert all(len(r["top"]) == 3 and r["top"][0]["class"] in DIGITS for r in records)
    assert not list(tmp_path.glob(".preds.jsonl.tmp-*"))
