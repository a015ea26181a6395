"""Per-sample train/eval transforms and the per-batch Mixup/CutMix with label smoothing.

Per sample (in the loader workers), starting from the encoded bytes:

* train: decode fused with RandomResizedCrop (see ``decode.py``) -> horizontal flip ->
  RandAugment or TrivialAugmentWide -> color jitter -> float in [0, 1] -> normalise ->
  random erasing. Everything after the crop is ``torchvision.transforms.v2``.
* eval: decode fused with resize (shorter side ``img_size / crop_pct``) + center crop ->
  float -> normalise.

Randomness comes from torch's global RNG, which the pipeline seeds once per sample from
``(seed, epoch, rank, worker, position)``: the augmentation of a sample is reproducible, also
after a resume that skipped the samples before it.

Per batch (in the training loop, on the device): :class:`MixupCutmix` picks Mixup or CutMix
(DeiT recipe: mixup alpha 0.8, cutmix alpha 1.0, switch prob 0.5) via ``v2.MixUp`` /
``v2.CutMix`` and applies label smoothing (0.1), returning soft targets (B, C) whose rows
are probability distributions. Smoothing is linear, so smoothing the mixed one-hot targets
equals mixing smoothed targets, as timm does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from .decode import decode_random_resized_crop, decode_resize_center_crop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# decode.py's measurements: torchvision.io wins except eval crops of large JPEGs ("auto" picks).
DEFAULT_BACKEND = "auto"


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings; defaults follow DeiT's ImageNet recipe."""

    img_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment_ops: int = 2  # 0 turns RandAugment off
    randaugment_magnitude: int = 9
    trivial_augment: bool = False  # TrivialAugmentWide instead of RandAugment
    color_jitter: float = 0.0  # brightness = contrast = saturation strength; 0 = off
    random_erasing: float = 0.25
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    backend: str = DEFAULT_BACKEND  # "auto", "tv" or "pil", see decode.py


class SampleTransform:
    """Encoded image bytes -> normalised float tensor (3, img_size, img_size). Picklable."""

    def __init__(self, cfg: AugmentConfig, train: bool):
        self.cfg, self.train = cfg, train
        post: list = []
        if train:
            if cfg.hflip > 0:
                post.append(v2.RandomHorizontalFlip(cfg.hflip))
            if cfg.trivial_augment:
                post.append(v2.TrivialAugmentWide())
            elif cfg.randaugment_ops > 0:
                post.append(v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude))
            if cfg.color_jitter > 0:
                post.append(v2.ColorJitter(cfg.color_jitter, cfg.color_jitter, cfg.color_jitter))
        post += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
        if train and cfg.random_erasing > 0:
            post.append(v2.RandomErasing(p=cfg.random_erasing, value=0))
        self.post = v2.Compose(post)

    def __call__(self, data: bytes) -> torch.Tensor:
        c = self.cfg
        if self.train:
            img = decode_random_resized_crop(data, c.img_size, c.scale, c.ratio, backend=c.backend)
        else:
            img = decode_resize_center_crop(data, c.img_size, c.crop_pct, backend=c.backend)
        return self.post(img)  # (3, S, S) float32


class MixupCutmix:
    """Batch-level Mixup / CutMix + label smoothing -> (images, soft targets (B, C)).

    ``prob`` is the chance that a batch is mixed at all; an unmixed batch still gets smoothed
    one-hot targets. Uses torch's global RNG (checkpointed with the trainer's RNG state).
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        label_smoothing: float = 0.1,
    ):
        self.num_classes, self.prob, self.smoothing = num_classes, prob, label_smoothing
        choices, weights = [], []
        if mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
            weights.append(1 - switch_prob if cutmix_alpha > 0 else 1.0)
        if cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
            weights.append(switch_prob if mixup_alpha > 0 else 1.0)
        self.mix = v2.RandomChoice(choices, p=weights) if choices else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mix is not None and torch.rand(()).item() < self.prob:
            images, targets = self.mix(images, labels)  # targets (B, C), rows sum to 1
        else:
            targets = torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        targets = targets * (1 - self.smoothing) + self.smoothing / self.num_classes
        return images, targets
