"""Per-sample train/eval transforms, batch normalisation, and the per-batch Mixup/CutMix.

Per sample (in the loader workers), starting from the encoded bytes:

* train: decode fused with RandomResizedCrop, or DeiT III's simple random crop (see
  ``decode.py``) -> horizontal flip -> ``augment.policy`` (timm's RandAugment strings or
  3-Augment, ``policies.py``), else torchvision's RandAugment or TrivialAugmentWide -> color
  jitter -> uint8 (3, S, S), plus the rectangle that random erasing will clear. Everything
  after the crop is ``torchvision.transforms.v2`` (functional ops for the policies).
* eval: decode fused with resize (shorter side ``img_size / crop_pct``) + center crop -> uint8.

Per batch, :class:`Normalize`: uint8 -> float in [0, 1] -> normalise -> erase the drawn
rectangles (value 0, i.e. the mean colour, as DeiT's ``RandomErasing(value=0)``). It runs
either in the loader workers (CPU training: batches arrive as floats) or on the training device
after the copy (CUDA: a quarter of the bytes go through shared memory, pinning and the host to
device copy, as timm's prefetcher does). Both places run the same ops, so the floats are
the same bit for bit, and equal to torchvision's per-sample ``ToDtype`` -> ``Normalize`` ->
``RandomErasing``: the erasing rectangle is drawn with ``RandomErasing``'s own RNG calls.

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

import torch
from torchvision.transforms import v2

from ..core.config import AugmentSection, DataSection
from ..core.errors import ConfigError, DataError
from .decode import decode_random_resized_crop, decode_resize_center_crop, decode_simple_random_crop
from .policies import build_policy

# "auto": torchvision.io, except PIL draft for eval crops of large JPEGs (see decode.py).
DEFAULT_BACKEND = "auto"


NO_ERASE = (0, 0, 0, 0)  # an erasing rectangle (top, left, height, width) that clears nothing


class SampleTransform:
    """Encoded image bytes -> uint8 (3, img_size, img_size) + erasing rectangle. Picklable.

    ``data`` gives the preprocessing every image gets (size, eval crop, filter, the image-size
    limit, normalisation); ``augment`` the training augmentation, or None for the evaluation
    transform (resize + center crop). :meth:`uint8` is what the loader workers run; calling the
    transform gives the normalised float image of one sample (prediction, tests).
    """

    def __init__(self, data: DataSection, augment: AugmentSection | None, *, backend: str = DEFAULT_BACKEND):
        self.data, self.augment, self.backend = data, augment, backend
        self.train = augment is not None
        post: list = []
        if augment is not None:
            if augment.hflip > 0:
                post.append(v2.RandomHorizontalFlip(augment.hflip))
            if augment.policy is not None:
                post.append(build_policy(augment.policy, data.mean))
            elif augment.trivial_augment:
                post.append(v2.TrivialAugmentWide())
            elif augment.randaugment_ops > 0:
                post.append(
                    v2.RandAugment(num_ops=augment.randaugment_ops, magnitude=augment.randaugment_magnitude)
                )
            if augment.color_jitter > 0:
                j = augment.color_jitter
                post.append(v2.ColorJitter(j, j, j))
        self.post = v2.Compose(post) if post else None
        self.erasing = (
            v2.RandomErasing(p=augment.random_erasing, value=0)
            if augment is not None and augment.random_erasing > 0
            else None
        )
        self.normalize = Normalize(data.mean, data.std)

    def uint8(self, data: bytes) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """-> (uint8 image (3, S, S), erasing rectangle (top, left, height, width) or NO_ERASE)."""
        d, a, limit = self.data, self.augment, self.data.max_image_pixels
        if a is not None and a.crop == "simple":
            img = decode_simple_random_crop(
                data, d.img_size, backend=self.backend, max_pixels=limit, interpolation=d.interpolation
            )
        elif a is not None:
            img = decode_random_resized_crop(
                data,
                d.img_size,
                (a.scale[0], a.scale[1]),
                (a.ratio[0], a.ratio[1]),
                backend=self.backend,
                max_pixels=limit,
                interpolation=d.interpolation,
            )
        else:
            img = decode_resize_center_crop(
                data,
                d.img_size,
                d.crop_pct,
                backend=self.backend,
                max_pixels=limit,
                interpolation=d.interpolation,
            )
        if self.post is not None:
            img = self.post(img)
        self._check_output(img)
        return img, self._erase_rect(img)

    def _check_output(self, img: torch.Tensor) -> None:
        """Raise (a bad sample, in the loader) unless ``img`` is what a batch stacks: a sample of
        another dtype or shape would otherwise fail the whole batch at collation."""
        S = self.data.img_size
        if img.dtype != torch.uint8 or tuple(img.shape) != (3, S, S):
            raise DataError(f"decoded to {img.dtype} {tuple(img.shape)}, not uint8 (3, {S}, {S})")

    def _erase_rect(self, img: torch.Tensor) -> tuple[int, int, int, int]:
        # The RNG calls of v2.RandomErasing.forward (the p draw, then its make_params), so the
        # rectangles are the ones torchvision would erase; applied later, on the float batch.
        e = self.erasing
        if e is None or torch.rand(1) >= e.p:
            return NO_ERASE
        p = e.make_params([img])
        return NO_ERASE if p["v"] is None else (int(p["i"]), int(p["j"]), int(p["h"]), int(p["w"]))

    def __call__(self, data: bytes) -> torch.Tensor:
        img, rect = self.uint8(data)
        return self.normalize(img[None], torch.tensor([rect]))[0]  # (3, S, S) float32


class Normalize:
    """uint8 batch (B, C, H, W) [+ erasing rectangles (B, 4)] -> normalised float32 batch.

    The ops of torchvision's ``ToDtype(float32, scale=True)`` -> ``Normalize`` -> erasing with
    value 0, on a whole batch, on whatever device the batch is on. No host synchronisation on
    an accelerator (the rectangles become a mask there); mean/std are cached per device.
    """

    def __init__(self, mean, std):
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        if not all(self.std):
            raise ConfigError(f"data.std must not contain 0, got {self.std}")
        self._consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._consts:
            m, s = (
                torch.tensor(v, dtype=torch.float32).view(-1, 1, 1).to(device) for v in (self.mean, self.std)
            )
            self._consts[device] = (m, s)
        return self._consts[device]

    def __call__(
        self, images: torch.Tensor, erase: torch.Tensor | None = None, slices: bool | None = None
    ) -> torch.Tensor:
        """``slices``: clear the rectangles slice by slice (default on CPU, where reading them
        costs nothing) instead of with one mask (no host sync on an accelerator)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image batch, got {images.dtype}")
        mean, std = self._on(images.device)
        x = images.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)
        if erase is None:
            return x
        if slices if slices is not None else erase.device.type == "cpu":
            for b, (i, j, h, w) in enumerate(erase.tolist()):
                if h and w:
                    x[b, :, i : i + h, j : j + w] = 0
            return x
        return x.masked_fill_(erase_mask(erase, x.shape[-2], x.shape[-1])[:, None], 0)


def erase_mask(erase: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4) rectangles (top, left, height, width) -> (B, H, W) bool, True inside the rectangle."""
    top, left, h, w = erase.unbind(1)
    rows = torch.arange(height, device=erase.device)[None]
    cols = torch.arange(width, device=erase.device)[None]
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


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

    @classmethod
    def for_training(
        cls, augment: AugmentSection, num_classes: int, label_smoothing: float
    ) -> MixupCutmix | None:
        """The batch mixing of a run's ``augment`` section, or None when it mixes nothing."""
        a = augment
        if not ((a.mixup > 0 or a.cutmix > 0) and a.mixup_prob > 0):
            return None
        return cls(num_classes, a.mixup, a.cutmix, a.switch_prob, a.mixup_prob, label_smoothing)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mix is not None and torch.rand(()).item() < self.prob:
            images, targets = self.mix(images, labels)  # targets (B, C), rows sum to 1
        else:
            targets = torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        targets = targets * (1 - self.smoothing) + self.smoothing / self.num_classes
        return images, targets
