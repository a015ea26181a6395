"""``augment.policy`` and ``augment.crop``: timm's RandAugment strings read as timm reads them,
each op held to timm's own (PIL) op on a real photo, DeiT III's 3-Augment, the simple random
crop, and the config's one-line refusals."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from vit_dist.core.config import config_from_dict
from vit_dist.core.errors import ConfigError
from vit_dist.core.policy import RandAugmentSpec, parse_policy
from vit_dist.data.decode import decode_simple_random_crop
from vit_dist.data.policies import (
    RAND_OPS,
    RAND_OPS_INCREASING,
    RandAugment,
    ThreeAugment,
    apply_op,
    build_policy,
    level_to_arg,
)

timm_aa = pytest.importorskip("timm.data.auto_augment")

FILL = (124, 116, 104)  # ImageNet's mean colour, as timm's img_mean


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from sklearn.datasets import load_sample_images

    return Image.fromarray(load_sample_images().images[0]).resize((128, 96), Image.BICUBIC)


def _tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize(
    "text", ["rand-m9-mstd0.5-inc1", "rand-m7-n3-p0.7", "rand-m10-mstd101", "rand-n1-mmax12-m15-inc0"]
)
def test_strings_are_read_as_timm_reads_them(text):
    ref = timm_aa.rand_augment_transform(text, {"img_mean": FILL})
    spec = parse_policy(text)
    assert isinstance(spec, RandAugmentSpec)
    ours = RandAugment(spec, FILL)
    assert spec.num_ops == ref.num_layers
    assert list(ours.ops) == [op.name for op in ref.ops]
    op = ref.ops[0]
    assert spec.magnitude == op.magnitude and spec.prob == op.prob
    assert spec.magnitude_std == op.magnitude_std and spec.magnitude_max == (op.magnitude_max or 10)


@pytest.mark.parametrize("name", list(dict.fromkeys(RAND_OPS + RAND_OPS_INCREASING)))
@pytest.mark.parametrize("m", [3, 9])
def test_each_op_is_timms_op_on_a_real_photo(photo, name, m):
    """timm's argument (its sign drawn by its own RNG), our op and timm's PIL op on the same
    photo: the same image up to resampling and rounding (geometric ops differ at edges)."""
    random.seed(m)
    fn = timm_aa.LEVEL_TO_ARG[name]
    args = fn(m, {"translate_pct": 0.45}) if fn else ()
    arg = args[0] if args else 0.0
    unsigned = level_to_arg(name, m)
    if name.endswith("Increasing") and name[: -len("Increasing")] in (
        "Color",
        "Contrast",
        "Brightness",
        "Sharpness",
    ):
        assert abs(arg - 1.0) == pytest.approx(unsigned)  # timm's factor is 1 +- ours
    else:
        assert abs(arg) == pytest.approx(unsigned)
    want = np.asarray(timm_aa.NAME_TO_OP[name](photo, *args, fillcolor=FILL, resample=Image.BILINEAR))
    got = apply_op(_tensor(photo), name, arg, FILL, InterpolationMode.BILINEAR).permute(1, 2, 0).numpy()
    diff = np.abs(want.astype(int) - got.astype(int))
    if name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        assert diff.mean() < 1.0 and np.percentile(diff, 95) <= 3, (diff.mean(), np.percentile(diff, 95))
    else:
        assert diff.max() <= 1, diff.max()
    if name not in ("AutoContrast", "Equalize") and not (name.startswith("Solarize") and unsigned > 255):
        assert not np.array_equal(got, np.asarray(photo))  # the op did something


def test_rand_augment_draws_from_torchs_rng_and_changes_images(photo):
    aug = build_policy("rand-m9-mstd0.5-inc1", [0.485, 0.456, 0.406])
    assert isinstance(aug, RandAugment) and aug.fill == FILL
    img = _tensor(photo)
    torch.manual_seed(3)
    a = aug(img)
    torch.manual_seed(3)
    assert torch.equal(aug(img), a)  # reproducible from the per-sample seed
    changed = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = aug(img)
        assert out.dtype == torch.uint8 and out.shape == img.shape
        changed += not torch.equal(out, img)
    assert changed >= 15  # p = 0.5, two ops: 3 in 4 images change
    torch.manual_seed(0)
    none = build_policy("rand-m9-p0", [0.5] * 3)
    assert torch.equal(none(img), img)


def test_three_augment_is_grayscale_solarize_or_blur(photo):
    img = _tensor(photo)
    aug = build_policy("three_augment", [0.5] * 3)
    assert isinstance(aug, ThreeAugment) and isinstance(build_policy("3a", [0.5] * 3), ThreeAugment)
    kinds = set()
    for seed in range(30):
        torch.manual_seed(seed)
        out = aug(img)
        assert out.dtype == torch.uint8 and out.shape == img.shape
        if torch.equal(out[0], out[1]) and torch.equal(out[1], out[2]):
            kinds.add("gray")
        elif torch.equal(out, torch.where(img >= 128, 255 - img, img)):
            kinds.add("solarize")
        else:
            # a blur: smoother than the photo, the same mean colour
            assert out.float().diff(dim=-1).abs().mean() < img.float().diff(dim=-1).abs().mean()
            assert (out.float().mean() - img.float().mean()).abs() < 2
            kinds.add("blur")
    assert kinds == {"gray", "solarize", "blur"}


def test_simple_random_crop_resizes_the_shorter_side_pads_by_reflection_and_crops(photo):
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        for backend in ("tv", "pil"):
            out = decode_simple_random_crop(data, 48, backend=backend)
            assert out.shape == (3, 48, 48) and out.dtype == torch.uint8
        seen.add(out.float().mean().item())
    assert len(seen) > 1  # random positions
    # The crop keeps the whole shorter side (up to the 4 px pad): the photo is 128 x 96, so at
    # 48 px the kept window is 48 of the 64 resized columns, never a zoom as RandomResizedCrop's.
    torch.manual_seed(0)
    full = torch.nn.functional.interpolate(_tensor(photo)[None].float(), size=(48, 64), mode="bilinear")[0]
    out = decode_simple_random_crop(data, 48, padding=0, backend="tv").float()
    best = min((out - full[:, :, x : x + 48]).abs().mean().item() for x in range(17))
    assert best < 6


def test_config_checks_the_policy_and_crop():
    cfg = config_from_dict(
        {"augment": {"policy": "rand-m9-mstd0.5-inc1", "crop": "simple"}, "train": {"steps": 1}}
    )
    assert cfg.augment.policy == "rand-m9-mstd0.5-inc1" and cfg.augment.crop == "simple"
    for bad, words in (
        ("rand-m9-x3", "section 'x3'"),
        ("rand-tweights", "section 'tweights'"),
        ("v0", "AutoAugment and AugMix"),
        ("augmix-m5", "AutoAugment and AugMix"),
        ("rand-p2", "p must be in [0, 1]"),
    ):
        with pytest.raises(ConfigError, match="augment.policy") as e:
            config_from_dict({"augment": {"policy": bad}, "train": {"steps": 1}})
        assert words in str(e.value)
    with pytest.raises(ConfigError, match="two policies"):
        config_from_dict({"augment": {"policy": "3a", "trivial_augment": True}, "train": {"steps": 1}})
    assert parse_policy("rand-mstd200").magnitude_std == math.inf
