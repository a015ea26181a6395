"""Transforms: output shapes/dtypes, decode backends agree, Mixup/CutMix soft targets are distributions."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vit_dist.data.decode import decode_random_resized_crop, decode_resize_center_crop
from vit_dist.data.transforms import AugmentConfig, MixupCutmix, SampleTransform


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    from sklearn.datasets import load_sample_images

    buf = io.BytesIO()
    Image.fromarray(load_sample_images().images[0]).save(buf, "JPEG", quality=90)  # real 427x640 photo
    return buf.getvalue()


@pytest.mark.parametrize("backend", ["tv", "pil", "auto"])
@pytest.mark.parametrize("train", [True, False])
def test_sample_transform_shape_dtype_and_determinism(photo_jpeg, backend, train):
    t = SampleTransform(AugmentConfig(img_size=64, backend=backend, color_jitter=0.3), train=train)
    torch.manual_seed(0)
    a = t(photo_jpeg)
    torch.manual_seed(0)
    b = t(photo_jpeg)
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b)  # same seed, same augmentation
    assert -3 < a.mean() < 3  # normalised, not raw 0..255


def test_trivial_augment_and_png_input():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(buf, "PNG")
    out = SampleTransform(AugmentConfig(img_size=32, trivial_augment=True), train=True)(buf.getvalue())
    assert out.shape == (3, 32, 32)


def test_decode_backends_agree(photo_jpeg):
    tv = decode_resize_center_crop(photo_jpeg, 224, backend="tv").float()
    pil = decode_resize_center_crop(photo_jpeg, 224, backend="pil").float()
    assert tv.shape == pil.shape == (3, 224, 224)
    assert (tv - pil).abs().mean() < 6  # same crop; resampling filters differ slightly
    torch.manual_seed(1)
    crop_tv = decode_random_resized_crop(photo_jpeg, 96, backend="tv")
    torch.manual_seed(1)
    crop_pil = decode_random_resized_crop(photo_jpeg, 96, backend="pil")
    assert crop_tv.dtype == crop_pil.dtype == torch.uint8
    assert (crop_tv.float() - crop_pil.float()).abs().mean() < 12  # same box from the same seed


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"cutmix_alpha": 0.0},
        {"mixup_alpha": 0.0},
        {"prob": 0.0},
        {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
    ],
)
def test_mixup_cutmix_targets_are_distributions(kw):
    torch.manual_seed(0)
    mix = MixupCutmix(num_classes=10, **kw)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    for _ in range(5):
        out, targets = mix(images.clone(), labels)
        assert out.shape == images.shape and targets.shape == (8, 10) and targets.dtype == torch.float32
        assert torch.allclose(targets.sum(-1), torch.ones(8), atol=1e-5)
        assert targets.min() >= 0.1 / 10 - 1e-6  # label smoothing floor
        # the mass above the smoothing floor sits on the own label and the partner's (batch rolled by 1)
        above = targets > 0.01 + 1e-6
        allowed = torch.zeros_like(above)
        allowed[torch.arange(8), labels] = True
        allowed[torch.arange(8), labels.roll(1)] = True
        assert not (above & ~allowed).any() and above.any(-1).all()
    if kw.get("prob") == 0.0 or kw == {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}:
        assert torch.allclose(targets.max(-1).values, torch.full((8,), 0.9 + 0.01))
