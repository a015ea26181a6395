"""Image bytes -> uint8 CHW tensors, with the crop fused into the decode.

Two implementations of each operation, selected by ``backend``:

* ``"pil"``: PIL with draft mode. The crop box is drawn first from the image size (read from
  the header only), then ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT
  scaling: the skipped work is never done) whenever the crop still has at least the output
  resolution at that scale, and one ``Image.resize(box=...)`` crops and resizes.
* ``"tv"``: ``torchvision.io.decode_jpeg`` of the full image (any other format through
  ``decode_image``), then ``torchvision.transforms.v2.functional.resized_crop``.

Both draw the crop with the same algorithm as ``v2.RandomResizedCrop`` from torch's global RNG,
so seeding that generator per sample makes the crop deterministic for either backend.

``torchvision.io.decode_jpeg`` decodes a full JPEG faster than PIL, so it wins
RandomResizedCrop even where draft mode skips work (a random crop is often large, so the
reduction is often only 1/2). PIL draft wins the eval crop of large photos, where a fixed box
lets libjpeg decode at 1/2 or 1/4 scale. ``"auto"`` (the default) takes torchvision.io except
for that case. ``python -m vit_dist.data.bench`` compares the three; BENCHMARKS.md has the
figures. Note: torchvision 0.29 deprecates its codecs in favour of TorchCodec; if they go
away, ``"pil"`` is the drop-in fallback.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as F

# Every image stored by the shard writer is a JPEG; other formats take the generic path.
_JPEG_MAGIC = b"\xff\xd8\xff"


def rrc_params(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop box; same algorithm as torchvision's."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item()).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    # Fallback: the central crop with the aspect ratio clamped into range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()  # (3, H, W) uint8


def _pil_box_resize(im: Image.Image, box: tuple[int, int, int, int], out: tuple[int, int]) -> torch.Tensor:
    """Crop ``box`` = (top, left, h, w) in full-size coordinates and resize to ``out`` = (h, w),
    letting libjpeg downscale by up to 8x first while the box keeps >= ``out`` pixels."""
    width, height = im.size
    top, left, h, w = box
    factor = min(w / out[1], h / out[0])
    if im.format == "JPEG" and factor >= 2:
        reduce = 2 ** min(3, int(math.log2(factor)))
        im.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
    sx, sy = im.size[0] / width, im.size[1] / height  # the scale draft actually chose
    im = im.convert("RGB")
    im = im.resize(
        (out[1], out[0]),
        Image.BILINEAR,
        box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy),
    )
    return _to_tensor(im)


def _tv_decode(data: bytes) -> torch.Tensor:
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    # torchvision 0.29 deprecates its codecs for TorchCodec (not a dependency); they work and
    # are the faster path here, so the per-call notice is silenced (a few microseconds).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if data[:3] == _JPEG_MAGIC:
            return decode_jpeg(buf, mode=ImageReadMode.RGB)
        return decode_image(buf, mode=ImageReadMode.RGB)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header, without decoding pixels."""
    return Image.open(io.BytesIO(data)).size


def decode_random_resized_crop(
    data: bytes,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    backend: str = "auto",
) -> torch.Tensor:
    """Decode + RandomResizedCrop to ``size`` x ``size``; returns (3, size, size) uint8.

    ``"auto"`` is ``"tv"``: decoding the whole JPEG with torchvision.io beats PIL draft here,
    because a random crop is often large enough that draft can skip little.
    """
    if backend == "pil":
        im = Image.open(io.BytesIO(data))
        box = rrc_params(im.size[0], im.size[1], scale, ratio)
        return _pil_box_resize(im, box, (size, size))
    img = _tv_decode(data)
    top, left, h, w = rrc_params(img.shape[-1], img.shape[-2], scale, ratio)
    return F.resized_crop(img, top, left, h, w, [size, size], antialias=True)


def decode_resize_center_crop(
    data: bytes, size: int, crop_pct: float = 0.875, backend: str = "auto"
) -> torch.Tensor:
    """Decode, resize the shorter side to ``size / crop_pct`` and take the central ``size`` crop.

    Done as one box resize: the central square of side ``shorter * crop_pct`` (resize-then-crop
    keeps exactly that region) maps onto the ``size`` x ``size`` output. ``"auto"`` takes PIL
    draft when libjpeg can skip at least half the resolution (the box is >= 2x the output),
    where decoding at reduced scale saves more than PIL's slower decoder costs, and
    ``torchvision.io`` otherwise.
    """
    im = Image.open(io.BytesIO(data))  # header only: no pixels decoded yet
    width, height = im.size
    side = min(width, height) * crop_pct  # the kept central square, in source pixels
    if backend == "auto":
        backend = "pil" if im.format == "JPEG" and side >= 2 * size else "tv"
    box = (round((height - side) / 2), round((width - side) / 2), round(side), round(side))
    if backend == "pil":
        return _pil_box_resize(im, box, (size, size))
    return F.resized_crop(_tv_decode(data), *box, [size, size], antialias=True)
