"""The ``augment.policy`` transforms on uint8 (3, H, W) tensors: timm's RandAugment (its strings,
its 15 ops and their magnitude scales) and DeiT III's 3-Augment. The text is parsed in
``core/policy.py``.

timm computes these ops with PIL; here they are ``torchvision.transforms.v2.functional`` ops
on tensors (the loader's images are tensors), with timm's arguments: magnitude m on a 0-10
scale, each op applied with probability p, m drawn per op from N(m, mstd) when mstd > 0 and
clipped to [0, mmax], a random sign for rotations, shears, translations and the
``*Increasing`` enhancements, and the data set's mean colour as the fill of geometric ops.
Those resample bilinearly: torchvision's tensor affine has no bicubic (timm's default draws
bilinear or bicubic per op).
PIL and torchvision round differently, so a pixel may differ by a few levels;
tests/unit/test_policies.py holds each op to timm's on a real photo.

Randomness comes from torch's global RNG (seeded per sample by the pipeline, as for every
other augmentation), not Python's ``random``, so a sample's view is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..core.policy import RandAugmentSpec, parse_policy

LEVEL_DENOM = 10.0

# timm's op sets (auto_augment._RAND_TRANSFORMS / _RAND_INCREASING_TRANSFORMS), in its order.
RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip
RAND_OPS_INCREASING = tuple(
    f"{n}Increasing" if n in ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness") else n
    for n in RAND_OPS
)
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"} | {
    f"{n}Increasing" for n in ("Color", "Contrast", "Brightness", "Sharpness")
}


def level_to_arg(name: str, m: float) -> float:
    """The unsigned argument of op ``name`` at magnitude ``m`` (timm's ``LEVEL_TO_ARG``); the
    ops in ``SIGNED`` take it with a random sign (for the ``*Increasing`` enhancements: the
    factor is 1 +- this, at least 0.1)."""
    f = m / LEVEL_DENOM
    if name == "Rotate":
        return f * 30.0  # degrees
    if name in ("ShearX", "ShearY"):
        return f * 0.3  # shear factor
    if name in ("TranslateXRel", "TranslateYRel"):
        return f * 0.45  # fraction of the image side
    if name == "Posterize":
        return int(f * 4)  # bits kept
    if name == "PosterizeIncreasing":
        return 4 - int(f * 4)
    if name == "Solarize":
        return min(256, int(f * 256))  # threshold
    if name == "SolarizeIncreasing":
        return 256 - min(256, int(f * 256))
    if name == "SolarizeAdd":
        return min(128, int(f * 110))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return f * 1.8 + 0.1  # enhancement factor
    if name.endswith("Increasing"):
        return f * 0.9
    return 0.0  # AutoContrast, Equalize, Invert


def apply_op(
    img: torch.Tensor,
    name: str,
    arg: float,
    fill: Sequence[int],
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> torch.Tensor:
    """Op ``name`` with its (signed) argument on a uint8 (3, H, W) image, as timm's PIL op."""
    h, w = img.shape[-2:]
    fill_values = [float(v) for v in fill]
    if name == "AutoContrast":
        return F.autocontrast(img)
    if name == "Equalize":
        return F.equalize(img)
    if name == "Invert":
        return F.invert(img)
    if name == "Rotate":
        return F.rotate(img, arg, interpolation=interpolation, fill=fill_values)
    if name in ("ShearX", "ShearY"):
        # PIL's affine about the top-left corner: x_in = x + arg * y (ShearX); torchvision takes
        # the shear as an angle, about the given centre.
        deg = math.degrees(math.atan(arg))
        shear = [deg, 0.0] if name == "ShearX" else [0.0, deg]
        return F.affine(
            img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
            interpolation=interpolation, fill=fill_values, center=[0, 0],
        )  # fmt: skip
    if name in ("TranslateXRel", "TranslateYRel"):
        # PIL samples the input at x + pixels: the content moves by -pixels.
        shift = [-arg * w, 0.0] if name == "TranslateXRel" else [0.0, -arg * h]
        return F.affine(
            img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0],
            interpolation=interpolation, fill=fill_values,
        )  # fmt: skip
    if name.startswith("Posterize"):
        return img if arg >= 8 else F.posterize(img, int(arg))
    if name.startswith("Solarize") and name != "SolarizeAdd":
        return img if arg > 255 else F.solarize(img, arg)
    if name == "SolarizeAdd":
        return torch.where(img < 128, (img.int() + int(arg)).clamp_(max=255).to(torch.uint8), img)
    if name.startswith("Color"):
        return F.adjust_saturation(img, arg)
    if name.startswith("Contrast"):
        return F.adjust_contrast(img, arg)
    if name.startswith("Brightness"):
        return F.adjust_brightness(img, arg)
    if name.startswith("Sharpness"):
        return F.adjust_sharpness(img, arg)
    raise ValueError(f"unknown op {name!r}")  # a bug: the op sets above list every name


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


class RandAugment:
    """timm's ``RandAugment`` for a parsed string: ``num_ops`` ops drawn with replacement, each
    applied with probability ``prob``. Picklable (loader workers)."""

    def __init__(self, spec: RandAugmentSpec, fill: Sequence[int]):
        self.spec, self.fill = spec, tuple(fill)
        self.ops = RAND_OPS_INCREASING if spec.increasing else RAND_OPS

    def magnitude(self) -> float:
        s = self.spec
        m = float(s.magnitude)
        if s.magnitude_std == math.inf:
            m = _uniform(0.0, m)
        elif s.magnitude_std > 0:
            m = m + s.magnitude_std * float(torch.randn(()))
        return max(0.0, min(m, float(s.magnitude_max or LEVEL_DENOM)))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for i in torch.randint(len(self.ops), (self.spec.num_ops,)).tolist():
            if self.spec.prob < 1.0 and float(torch.rand(())) > self.spec.prob:
                continue
            name = self.ops[i]
            arg = level_to_arg(name, self.magnitude())
            if name in SIGNED:
                arg = -arg if float(torch.rand(())) > 0.5 else arg
                if name.endswith("Increasing"):
                    arg = max(0.1, 1.0 + arg)
            img = apply_op(img, name, arg, self.fill)
        return img


class ThreeAugment:
    """DeiT III's 3-Augment: one of grayscale (3 channels), solarization (threshold 128) or a
    Gaussian blur of sigma uniform in [0.1, 2.0], chosen uniformly per image. Picklable."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        choice = int(torch.randint(3, ()))
        if choice == 0:
            return F.rgb_to_grayscale(img, num_output_channels=3)
        if choice == 1:
            return F.solarize(img, 128)
        sigma = _uniform(0.1, 2.0)
        # A kernel of +-3 sigma (PIL's blur reaches as far), odd, and whose reflection padding
        # fits in the image.
        k = min(2 * math.ceil(3 * sigma) + 1, 2 * ((min(img.shape[-2:]) - 1) // 2) + 1)
        return F.gaussian_blur(img, [k, k], [sigma, sigma]) if k >= 3 else img


def build_policy(text: str, mean: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transform of ``augment.policy`` (see ``core/policy.py``); geometric ops fill with
    ``mean`` as 0-255 levels, as timm's ``img_mean``."""
    spec = parse_policy(text)
    if not isinstance(spec, RandAugmentSpec):  # "three_augment"
        return ThreeAugment()
    return RandAugment(spec, [min(255, round(255 * x)) for x in mean])
