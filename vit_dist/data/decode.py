"""Image bytes -> uint8 CHW tensors, with the crop fused into the decode.

Two implementations of each operation, selected by ``backend``:

* ``"pil"``: PIL with draft mode. The crop box is drawn first from the image size (read from
  the header only), then ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT
  scaling: the skipped work is never done) whenever the crop still has at least the output
  resolution at that scale, and one ``Image.resize(box=...)`` crops and resizes.
* ``"tv"``: ``torchvision.io.decode_jpeg`` of the full image, then
  ``torchvision.transforms.v2.functional.resized_crop``. Every other format, PNG included,
  is decoded by PIL whichever backend is asked for (:func:`_tv_decodes` says why).

Both draw the crop with the same algorithm as ``v2.RandomResizedCrop`` from torch's global RNG,
so seeding that generator per sample makes the crop deterministic for either backend.

``torchvision.io.decode_jpeg`` decodes a full JPEG faster than PIL, so it wins
RandomResizedCrop even where draft mode skips work (a random crop is often large, so the
reduction is often only 1/2). PIL draft wins the eval crop of large photos, where a fixed box
lets libjpeg decode at 1/2 or 1/4 scale. ``"auto"`` (the default) takes torchvision.io except
for that case. ``python -m vit_dist.data.bench`` compares the three; BENCHMARKS.md has the
figures. Note: torchvision 0.29 deprecates its codecs in favour of TorchCodec; if they go
away, ``"pil"`` is the drop-in fallback.

Hostile and odd images, the same on every backend:

* Size: before any pixel is decoded, :func:`check_image_size` reads the width and height from
  the header alone (:func:`image_size`) and refuses an image of more than ``max_pixels``
  (``data.max_image_pixels``) with a :class:`~vit_dist.core.errors.DataError`: a 634-byte JPEG can
  declare 20000x20000 pixels, which a decoder would allocate (1.2 GB of RGB) before finding
  the data missing. The loader counts such an image as a bad sample; predict reports it.
* Modes: torchvision.io decodes JPEG only (CMYK and grayscale JPEG read as RGB); every other
  format goes through PIL whichever backend is asked for (PNG, BMP, PPM, TIFF, GIF's first
  frame, WebP), and :func:`to_rgb8` turns each PIL mode into 8-bit RGB with scaled, not
  clipped, values (palette, grey+alpha, 1-bit and 16-bit PNG; PIL reads a 16-bit RGB PNG by
  its high bytes). Alpha is dropped (the colour under it is kept). A mode with no RGB
  conversion raises, which the loader counts as a bad sample.
* Damaged files: a decoder that raises makes the sample a counted bad sample. No native
  decoder that crashes the process on damaged input is called (see :func:`_tv_decodes`), and
  a PNG whose pixel data is shorter than its header declares is refused before decoding
  (:func:`check_png_data`) instead of coming out partly black.
"""

from __future__ import annotations

import io
import math
import re
import warnings
import zlib

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..core.errors import DataError

# Every image stored by the shard writer is a JPEG, the one format torchvision.io decodes here.
# Anything else is decoded by PIL.
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG frame headers (SOF0-SOF15) carry the image size; 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC)
# share the range but are not frame headers.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# A marker: 0xFF, any 0xFF fill bytes, the marker byte. Stray bytes before it, 0xFF 0x00 pairs
# included, are skipped as libjpeg skips them (with a warning); the search runs in C, not in a
# Python loop per byte, so a sample padded with junk stays cheap.
_MARKER = re.compile(rb"\xff[\xff]*([^\xff\x00])")
# PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS), the default and the ceiling
# of data.max_image_pixels: PIL warns above it and refuses twice it, so a larger limit could not
# be honoured by the PIL paths. At this size an RGB decode holds 270 MB.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# PIL modes holding 16-bit (or wider integer) samples: scaled by 255/65535 to 8 bits.
_WIDE_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


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
    return torch.from_numpy(np.array(to_rgb8(im))).permute(2, 0, 1).contiguous()  # (3, H, W) uint8


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the first frame header, walking the markers the way libjpeg does
    (stray bytes and 0xFF fill skipped, standalone markers have no length; libjpeg refuses a
    second frame header, so the first is the size it decodes)."""
    i, n = 2, len(data)
    while (found := _MARKER.search(data, i)) is not None:
        marker, i = found[1][0], found.end()
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            continue
        if marker in (0xD8, 0xD9, 0xDA) or i + 2 > n:  # SOI again, EOI, or a scan before any frame
            break
        if marker in _SOF_MARKERS:
            if i + 7 > n:
                break
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 3 : i + 5], "big")
        i += int.from_bytes(data[i : i + 2], "big")
    raise ValueError("JPEG without a frame header (SOF)")


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the IHDR chunk, which the PNG format requires to come first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("PNG without an IHDR header")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# PNG colour type -> samples per pixel (grey, RGB, palette, grey+alpha, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 interlacing: (x0, y0, dx, dy) of each of its 7 passes.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20  # inflated at most this many bytes at a time: memory stays bounded


def _png_raw_size(width: int, height: int, bit_depth: int, channels: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines a PNG of this header must inflate to (a filter byte per row)."""
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + -(-(w * channels * bit_depth) // 8))
    return total


def check_png_data(data: bytes) -> None:
    """Raise ``ValueError`` unless the PNG's IDAT chunks inflate to at least the scanlines its
    header declares.

    PIL fills the rows of a short IDAT with zeros without a word (a silently black image), and
    torchvision.io's libpng crashes the process on it, so a short one is refused here before any
    decoder runs. The chunks are walked by their lengths (a length past the end is refused) and
    only IDAT is inflated, at most ``_INFLATE_STEP`` bytes at a time and only until the declared
    size is reached: the cost is one extra inflate of the pixel data, about half a decode."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ValueError("PNG without an IHDR header")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth, colour, interlace = data[24], data[25], data[28]
    if colour not in _PNG_CHANNELS or bit_depth not in (1, 2, 4, 8, 16):
        raise ValueError(f"PNG header with colour type {colour} at bit depth {bit_depth}")
    need = _png_raw_size(width, height, bit_depth, _PNG_CHANNELS[colour], interlace == 1)
    inflate, got, i, seen_idat = zlib.decompressobj(), 0, 8, False
    while i + 8 <= len(data) and got < need:
        length, kind = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8]
        body = data[i + 8 : i + 8 + length]
        if len(body) < length:
            raise ValueError(f"PNG chunk {kind!r} runs past the end of the file")
        if kind == b"IDAT":
            seen_idat = True
            while body and got < need:
                try:
                    got += len(inflate.decompress(body, _INFLATE_STEP))
                except zlib.error as e:
                    raise ValueError(f"PNG pixel data does not inflate: {e}") from None
                body = inflate.unconsumed_tail
        elif kind == b"IEND" or (seen_idat and kind != b"IDAT"):
            break  # the IDAT chunks are consecutive: the pixel data has ended
        i += 12 + length
    if got < need:
        raise ValueError(
            f"PNG pixel data is truncated: it inflates to {got} of the {need} bytes its header declares"
        )


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) that the image's header declares, without decoding a pixel.

    JPEG (frame header) and PNG (IHDR), the formats torchvision.io decodes here, are parsed
    here in microseconds; any other format by PIL's lazy ``Image.open``, which reads only the
    header. Raises for bytes that are no image.
    """
    if data[:3] == _JPEG_MAGIC:
        return _jpeg_size(data)
    if data[:8] == _PNG_MAGIC:
        return _png_size(data)
    with warnings.catch_warnings():  # the size is checked against our limit by the caller
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:
            return im.size


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise DataError(
            f"image header declares {width}x{height} = {width * height} pixels, over "
            f"data.max_image_pixels={max_pixels}; not decoded"
        )


def check_image_size(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) from the header, after refusing (``DataError``) an image of more than
    ``max_pixels`` pixels: every decode path calls this before decoding anything, so a tiny
    file declaring a huge image never makes a decoder allocate it."""
    width, height = image_size(data)
    _check_pixels(width, height, max_pixels)
    return width, height


def _open_pil(data: bytes, max_pixels: int) -> Image.Image:
    """PIL's lazy open (header only) of an image checked against ``max_pixels``, by our header
    parse and by the header PIL itself read (its decoder allocates what PIL read)."""
    check_image_size(data, max_pixels)
    if data[:8] == _PNG_MAGIC:
        check_png_data(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
    _check_pixels(*im.size, max_pixels)
    return im


def _scale16_to_8(a: np.ndarray) -> np.ndarray:
    """16-bit samples -> 8-bit, rounding v * 255 / 65535 (= v / 257); wider values are clipped first."""
    return ((np.clip(a, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)


def _float_to_8(a: np.ndarray) -> np.ndarray:
    """Float samples -> 8-bit: an image within [0, 1] is the usual float convention (x 255),
    anything larger is taken as 0..255 (PIL's convention for mode F); NaN becomes 0."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if a.size and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL image -> mode ``RGB`` (8 bits per channel), values scaled to the 8-bit range.

    PIL's own ``convert`` clips 16-bit and float samples to 0..255 (a 16-bit image comes out
    almost white), so those modes are scaled here: ``I;16*`` and ``I`` as 16-bit (``I`` is
    how PIL reads 16-bit grayscale, e.g. PNG or TIFF), ``F`` by :func:`_float_to_8`. Palette
    images with transparency go through RGBA (PIL warns otherwise); alpha is dropped. Modes
    PIL cannot convert raise ``ValueError``.
    """
    if im.mode == "RGB":
        return im
    if im.mode in _WIDE_INT_MODES:
        return Image.fromarray(_scale16_to_8(np.asarray(im)), "L").convert("RGB")
    if im.mode == "F":
        return Image.fromarray(_float_to_8(np.asarray(im)), "L").convert("RGB")
    if im.mode == "PA" or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    return im.convert("RGB")


# data.interpolation -> the PIL filter and the torchvision mode of the same resize.
_PIL_FILTER = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_TV_MODE = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def _filters(interpolation: str) -> tuple[Image.Resampling, InterpolationMode]:
    if interpolation not in _PIL_FILTER:
        raise ValueError(f"interpolation must be one of {sorted(_PIL_FILTER)}, got {interpolation!r}")
    return _PIL_FILTER[interpolation], _TV_MODE[interpolation]


def _pil_box_resize(
    im: Image.Image, box: tuple[int, int, int, int], out: tuple[int, int], interpolation: str = "bilinear"
) -> torch.Tensor:
    """Crop ``box`` = (top, left, h, w) in full-size coordinates and resize to ``out`` = (h, w),
    letting libjpeg downscale by up to 8x first while the box keeps >= ``out`` pixels."""
    width, height = im.size
    top, left, h, w = box
    factor = min(w / out[1], h / out[0])
    if im.format == "JPEG" and factor >= 2:
        reduce = 2 ** min(3, int(math.log2(factor)))
        im.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
    sx, sy = im.size[0] / width, im.size[1] / height  # the scale draft actually chose
    im = to_rgb8(im)
    im = im.resize(
        (out[1], out[0]),
        _filters(interpolation)[0],
        box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy),
    )
    return _to_tensor(im)


def _tv_decodes(data: bytes) -> bool:
    """Whether the torchvision.io path takes these bytes (JPEG); PIL takes the rest.

    Not PNG: torchvision.io's libpng wrapper segfaults the process on a PNG whose IDAT holds
    fewer rows than its header declares (a 65-byte file does it; ``libpng error: Not enough
    image data``), which no ``except`` can catch, and libpng reports any damage that way. PIL
    raises instead, and decodes PNG within 0.9-1.35x of torchvision's time (BENCHMARKS.md);
    :func:`check_png_data` refuses the short IDAT that PIL would fill with zeros."""
    return data[:3] == _JPEG_MAGIC


def _tv_decode(data: bytes) -> torch.Tensor:
    """JPEG bytes (already size-checked) -> (3, H, W) uint8 RGB."""
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    # torchvision 0.29 deprecates its codecs for TorchCodec (not a dependency); they work and
    # are the faster path here, so the per-call notice is silenced (a few microseconds).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(buf, mode=ImageReadMode.RGB)


def decode_random_resized_crop(
    data: bytes,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    backend: str = "auto",
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Decode + RandomResizedCrop to ``size`` x ``size``; returns (3, size, size) uint8.

    ``"auto"`` is ``"tv"``: decoding the whole JPEG with torchvision.io beats PIL draft here,
    because a random crop is often large enough that draft can skip little. An image of more
    than ``max_pixels`` raises ``DataError`` before it is decoded.
    """
    if backend == "pil" or not _tv_decodes(data):
        im = _open_pil(data, max_pixels)
        box = rrc_params(im.size[0], im.size[1], scale, ratio)
        return _pil_box_resize(im, box, (size, size), interpolation)
    mode = _filters(interpolation)[1]
    check_image_size(data, max_pixels)
    img = _tv_decode(data)
    top, left, h, w = rrc_params(img.shape[-1], img.shape[-2], scale, ratio)
    return F.resized_crop(img, top, left, h, w, [size, size], interpolation=mode, antialias=True)


def decode_resize_center_crop(
    data: bytes,
    size: int,
    crop_pct: float = 0.875,
    backend: str = "auto",
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Decode, resize the shorter side to ``size / crop_pct`` and take the central ``size`` crop.

    Done as one box resize: the central square of side ``shorter * crop_pct`` (resize-then-crop
    keeps exactly that region) maps onto the ``size`` x ``size`` output. ``"auto"`` takes PIL
    draft when libjpeg can skip at least half the resolution (the box is >= 2x the output),
    where decoding at reduced scale saves more than PIL's slower decoder costs, and
    ``torchvision.io`` otherwise (PIL for formats torchvision.io does not take here). An image
    of more than ``max_pixels`` raises ``DataError`` before it is decoded.
    """
    im = _open_pil(data, max_pixels)  # header only: no pixels decoded yet
    width, height = im.size
    side = min(width, height) * crop_pct  # the kept central square, in source pixels
    if backend == "auto":
        backend = "pil" if im.format == "JPEG" and side >= 2 * size else "tv"
    if not _tv_decodes(data):
        backend = "pil"
    box = (round((height - side) / 2), round((width - side) / 2), round(side), round(side))
    mode = _filters(interpolation)[1]
    if backend == "pil":
        return _pil_box_resize(im, box, (size, size), interpolation)
    return F.resized_crop(_tv_decode(data), *box, [size, size], interpolation=mode, antialias=True)


def decode_simple_random_crop(
    data: bytes,
    size: int,
    padding: int = 4,
    backend: str = "auto",
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Decode + DeiT III's simple random crop: resize the shorter side to ``size`` (the aspect
    kept), pad ``padding`` pixels on each side by reflection, take a random ``size`` x ``size``
    crop; returns (3, size, size) uint8. Backends and the pixel limit as in
    :func:`decode_random_resized_crop`."""
    pil_filter, mode = _filters(interpolation)
    if backend == "pil" or not _tv_decodes(data):
        im = to_rgb8(_open_pil(data, max_pixels))
        w, h = im.size
        short = min(w, h)
        img = _to_tensor(
            im.resize((max(size, round(w * size / short)), max(size, round(h * size / short))), pil_filter)
        )
    else:
        check_image_size(data, max_pixels)
        img = F.resize(_tv_decode(data), [size], interpolation=mode, antialias=True)
    # Reflection needs padding < each side; a side of `size` <= padding (a tiny image size) is
    # padded by replication instead.
    pad_mode = "reflect" if min(img.shape[-2:]) > padding else "edge"
    img = F.pad(img, [padding] * 4, padding_mode=pad_mode) if padding > 0 else img
    top = int(torch.randint(0, img.shape[-2] - size + 1, (1,)))
    left = int(torch.randint(0, img.shape[-1] - size + 1, (1,)))
    return img[:, top : top + size, left : left + size].contiguous()
