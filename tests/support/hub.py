"""What tests/unit/test_hub.py and tests/integration/test_hub.py share."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40

ORG = "test-org"


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection fails at once


ARCH = dict(img_size=32, depth=2)  # vit_tiny_patch16_224 made small: 2 blocks, 2x2 patches


def timm_config(num_classes: int, labels: list[str] | None = None) -> dict:
    """config.json as timm's push_to_hf_hub writes it."""
    cfg = {
        "architecture": "vit_tiny_patch16_224",
        "num_classes": num_classes,
        "num_features": 192,
        "global_pool": "token",
        "model_args": dict(ARCH),
        "pretrained_cfg": {
            "tag": "test",
            "custom_load": False,
            "input_size": [3, 32, 32],
            "fixed_input_size": True,
            "interpolation": "bicubic",
            "crop_pct": 0.9,
            "crop_mode": "center",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "num_classes": num_classes,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }
    if labels:
        cfg["label_names"] = labels
    return cfg


def timm_weights(num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """A tiny timm ViT's state dict (timm's own parameter names)."""
    import timm  # the reference writer of the format; only these tests need it

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **ARCH)
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def st_bytes(sd: dict[str, torch.Tensor], tmp: Path) -> bytes:
    path = tmp / "w.safetensors"
    save_file(sd, str(path), metadata={"format": "pt"})
    return path.read_bytes()


def add_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], refs=("main",)) -> None:
    """One commit of a repository in the hub cache layout huggingface_hub itself writes."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def weights() -> dict[str, dict[str, torch.Tensor]]:
    import timm  # the writer of the timm-only architecture's weights

    torch.manual_seed(3)
    convnext = timm.create_model("test_convnext", num_classes=10).state_dict()
    return {
        "a": timm_weights(10, 0),
        "b": timm_weights(10, 1),
        "in5": timm_weights(5, 2),
        "convnext": convnext,
    }


@pytest.fixture
def hub(tmp_path, weights, monkeypatch):
    """A populated offline hub cache; the environment (for subprocesses) and huggingface_hub's
    constants (read once at its import, so set here for this process too) point at it."""
    home = tmp_path / "hf"
    cache = home / "hub"
    j = lambda d: json.dumps(d).encode()
    add_snapshot(
        cache,
        f"{ORG}/tiny-vit",
        COMMIT_A,
        {"config.json": j(timm_config(10, DIGITS)), "model.safetensors": st_bytes(weights["a"], tmp_path)},
    )
    add_snapshot(
        cache,
        f"{ORG}/tiny-vit",
        COMMIT_B,
        {"config.json": j(timm_config(10, DIGITS)), "model.safetensors": st_bytes(weights["b"], tmp_path)},
        refs=("v2",),
    )
    add_snapshot(
        cache,
        f"{ORG}/tiny-vit-in5",
        COMMIT_A,
        {"config.json": j(timm_config(5)), "model.safetensors": st_bytes(weights["in5"], tmp_path)},
    )
    torch.save(weights["a"], tmp_path / "w.bin")
    add_snapshot(
        cache,
        f"{ORG}/tiny-vit-bin",
        COMMIT_A,
        {"config.json": j(timm_config(10)), "pytorch_model.bin": (tmp_path / "w.bin").read_bytes()},
    )
    add_snapshot(cache, f"{ORG}/no-weights", COMMIT_A, {"config.json": j(timm_config(10))})
    unknown = {**timm_config(10), "architecture": "not_a_model_anywhere"}
    add_snapshot(cache, f"{ORG}/unknown", COMMIT_A, {"config.json": j(unknown)})
    convnext = {**timm_config(10), "architecture": "test_convnext", "global_pool": "avg", "model_args": {}}
    add_snapshot(
        cache,
        f"{ORG}/convnext",
        COMMIT_A,
        {"config.json": j(convnext), "model.safetensors": st_bytes(weights["convnext"], tmp_path)},
    )

    variables = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": CLOSED}
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED)
    return {"home": home, "cache": cache, "env": variables, "tmp": tmp_path}


def digit_png(path: Path, value: int = 3) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    i = int((d.target == value).nonzero()[0][0])
    image = Image.fromarray((d.images[i] * 16).clip(0, 255).astype("uint8")).convert("RGB")
    image.resize((40, 40)).save(path)
    return path
