"""Transforms: output shapes/dtypes, decode backends agree, Mixup/CutMix soft targets are distributions."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vit_dist.core.config import AugmentSection, DataSection
from vit_dist.data.decode import decode_random_resized_crop, decode_resize_center_crop
from vit_dist.data.transforms import MixupCutmix, SampleTransform


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    from sklearn.datasets import load_sample_images

    buf = io.BytesIO()
    Image.fromarray(load_sample_images().images[0]).save(buf, "JPEG", quality=90)  # real 427x640 photo
    return buf.getvalue()


@pytest.mark.parametrize("backend", ["tv", "pil", "auto"])
@pytest.mark.parametrize("train", [True, False])
def test_sample_transform_shape_dtype_and_determinism(photo_jpeg, backend, train):
    t = SampleTransform(
        DataSection(img_size=64), AugmentSection(color_jitter=0.3) if train else None, backend=backend
    )
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
    out = SampleTransform(DataSection(img_size=32), AugmentSection(trivial_augment=True))(buf.getvalue())
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


@pytest.mark.parametrize("backend", ["tv", "pil"])
def test_bicubic_interpolation_is_torchvisions_bicubic(photo_jpeg, backend):
    """data.interpolation=bicubic (what timm's and DeiT's weights were trained with) reaches both
    decoders: the eval crop equals torchvision's bicubic Resize+CenterCrop, not the bilinear one."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    full = decode_jpeg(torch.frombuffer(bytearray(photo_jpeg), dtype=torch.uint8))
    h, w = full.shape[1:]
    side = min(h, w) * 0.5  # decode_resize_center_crop's box at crop_pct=0.5
    box = (round((h - side) / 2), round((w - side) / 2), round(side), round(side))
    ref = {
        m: F.resized_crop(full, *box, [64, 64], interpolation=mode, antialias=True).float()
        for m, mode in (("bilinear", InterpolationMode.BILINEAR), ("bicubic", InterpolationMode.BICUBIC))
    }
    kw = dict(crop_pct=0.5, backend=backend)
    bicubic = decode_resize_center_crop(photo_jpeg, 64, interpolation="bicubic", **kw).float()
    bilinear = decode_resize_center_crop(photo_jpeg, 64, interpolation="bilinear", **kw).float()
    assert not torch.equal(bicubic, bilinear)
    err = {m: (bicubic - r).abs().mean().item() for m, r in ref.items()}
    assert err["bicubic"] < err["bilinear"], err
    if backend == "tv":
        assert err["bicubic"] < 1.0, err  # the same operation, up to the box's rounding
    t = SampleTransform(
        DataSection(img_size=48, interpolation="bicubic"),
        AugmentSection(hflip=0.0, randaugment_ops=0),
        backend=backend,
    )
    torch.manual_seed(3)
    crop = decode_random_resized_crop(photo_jpeg, 48, backend=backend, interpolation="bicubic")
    torch.manual_seed(3)
    assert torch.equal(t.uint8(photo_jpeg)[0], crop)  # the train crop too
    with pytest.raises(ValueError, match="interpolation must be one of"):
        decode_resize_center_crop(photo_jpeg, 64, interpolation="lanczos")


def test_interpolation_key_and_resize_filter_of_weights():
    from vit_dist.core.config import ConfigError, load_config
    from vit_dist.predict import resize_filter

    overrides = [
        "data.interpolation=bicubic",
        "augment.hflip=0",
        "augment.randaugment_ops=0",
        "train.steps=1",
    ]
    cfg = load_config(None, [*overrides, "augment.random_erasing=0"])
    # A config's sections reach the transform as they are: data's filter, augment's settings.
    train = SampleTransform(cfg.data, cfg.augment)
    assert train.train and train.data.interpolation == "bicubic" and train.augment.hflip == 0.0
    assert train.post is None and train.erasing is None  # no flip, RandAugment or erasing: as set
    assert SampleTransform(cfg.data, None).data.interpolation == "bicubic"  # evaluation too
    with pytest.raises(ConfigError, match="interpolation"):
        load_config(None, ["data.interpolation=lanczos", "train.steps=1"])
    assert resize_filter(None) == "bilinear"  # exports from before the key existed
    assert resize_filter("bicubic") == "bicubic"
    assert resize_filter("lanczos") == "bilinear"
    from vit_dist.predict import Preprocess

    info = {"img_size": 32, "crop_pct": 0.9, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    assert Preprocess(info).default.data.interpolation == Preprocess(info).pil.data.interpolation == "bicubic"
    assert Preprocess({**info, "interpolation": None}).default.data.interpolation == "bilinear"


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


@pytest.mark.parametrize("train", [True, False])
def test_uint8_then_batch_normalize_equals_torchvisions_float_pipeline(photo_jpeg, train):
    """The workers' uint8 + rectangle, normalised later as a batch, is torchvision's per-sample
    ToDtype -> Normalize -> RandomErasing(value=0) bit for bit, from the same RNG draws."""
    from torchvision.transforms import v2

    data, aug = DataSection(img_size=64), AugmentSection(random_erasing=0.9, color_jitter=0.2)
    ours = SampleTransform(data, aug if train else None)
    ref = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data.mean), list(data.std))]
    if train:
        ref.append(v2.RandomErasing(p=aug.random_erasing, value=0))
    ref = v2.Compose(ref)
    erased = 0
    for seed in range(12):
        torch.manual_seed(seed)
        img, rect = ours.uint8(photo_jpeg)
        after_ours = torch.rand(3)  # the RNG is left where torchvision's pipeline leaves it
        torch.manual_seed(seed)
        u8 = ours.post(_decode_like(ours, photo_jpeg)) if ours.post else _decode_like(ours, photo_jpeg)
        expected = ref(u8)
        assert torch.equal(torch.rand(3), after_ours)
        assert img.dtype == torch.uint8 and img.shape == (3, 64, 64)
        got = ours.normalize(img[None], torch.tensor([rect]))[0]
        assert torch.equal(got, expected), seed
        erased += rect[2] > 0
        assert (rect[2] > 0) == bool((expected == 0).all(0).any())  # a rectangle iff zeros
    assert erased >= 6 if train else erased == 0  # p=0.9 over 12 draws: erasing did happen


def _decode_like(t: SampleTransform, data: bytes) -> torch.Tensor:
    d, a = t.data, t.augment
    if a is not None:
        scale, ratio = (a.scale[0], a.scale[1]), (a.ratio[0], a.ratio[1])
        return decode_random_resized_crop(data, d.img_size, scale, ratio, backend=t.backend)
    return decode_resize_center_crop(data, d.img_size, d.crop_pct, backend=t.backend)


def test_erase_mask_on_an_accelerator_equals_slicing_on_cpu():
    """The mask used where reading the rectangles would sync the host clears the same pixels."""
    from vit_dist.data.transforms import Normalize, erase_mask

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 20, 24), dtype=torch.uint8, generator=g)
    erase = torch.tensor([[0, 0, 0, 0], [2, 3, 5, 7], [0, 0, 19, 23], [15, 1, 5, 2], [4, 20, 1, 4]])
    norm = Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    sliced = norm(images, erase)
    masked = norm(images, erase, slices=False)  # the accelerator path
    assert torch.equal(sliced, masked)
    assert torch.equal(masked, norm(images).masked_fill_(erase_mask(erase, 20, 24)[:, None], 0))
    assert int((sliced == 0).all(1).sum()) == 5 * 7 + 19 * 23 + 5 * 2 + 1 * 4
    with pytest.raises(TypeError, match="uint8"):
        norm(images.float())
