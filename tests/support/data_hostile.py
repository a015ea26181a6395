"""What tests/unit/test_data_hostile.py and tests/integration/test_data_hostile.py share."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from vit_dist.data import decode

S = 16  # the side of the odd images and of the loader's output: the eval crop is then the identity


BOMB_SIDE = 20000


FORTY_GB = 40 * 2**30


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png(width: int, height: int, bit_depth: int, idat: bytes, interlace: int = 0) -> bytes:
    """A colour-type-2 (RGB) PNG with the header ``width`` x ``height`` x ``bit_depth`` and one
    IDAT chunk holding ``idat`` (the compressed rows), every chunk's CRC right."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _png_rgb16(a: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one): the (H, W, 3) uint16 array ``a``."""
    h, w, _ = a.shape
    rows = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    return _png(w, h, 16, zlib.compress(rows))


def _png_rows(rows: int, height: int = S, width: int = S) -> bytes:
    """An 8-bit RGB PNG whose header declares ``height`` rows and whose IDAT holds ``rows``."""
    return _png(width, height, 8, zlib.compress((b"\0" + b"\x80" * 3 * width) * rows))


# Damaged PNGs with valid chunks and CRCs: torchvision.io's libpng wrapper segfaults on both
# ("libpng error: Not enough image data"); they must be counted bad samples.
DAMAGED_PNGS = {"IDAT of nothing": _png_rows(0), "IDAT of 4 of 16 rows": _png_rows(4)}


def _pixel_bomb(side: int = BOMB_SIDE) -> bytes:
    """A JPEG of a few hundred bytes whose frame header (SOF0) declares ``side`` x ``side``."""
    data = bytearray(_encode(Image.new("RGB", (8, 8), (200, 10, 10)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2  # height, width
    return bytes(data)


def _scale16(v: np.ndarray) -> np.ndarray:
    return ((v.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v * 255 / 65535)


def _gray3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def _odd_images() -> dict[str, tuple[str, bytes, np.ndarray, int]]:
    """name -> (tar extension, encoded bytes, expected (S, S, 3) uint8 decode, tolerance)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    rows, cols = np.meshgrid(np.arange(S) * 15, np.arange(S) * 12, indexing="ij")
    # A smooth image, which JPEG keeps within a level or two.
    smooth = np.stack([rows, cols, np.full((S, S), 90)], 2).astype(np.uint8)
    g16 = rng.integers(0, 65536, (S, S), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (S, S, 3), dtype=np.uint16)
    f01 = rng.random((S, S)).astype(np.float32)
    f255 = (rng.random((S, S)) * 300 - 20).astype(np.float32)  # over 1: PIL's 0..255 scale, clipped
    pal = Image.fromarray(rgb).convert("P")
    gray = Image.fromarray(rgb).convert("L")
    return {
        "16-bit gray PNG (I;16)": ("png", _encode(Image.fromarray(g16), "PNG"), _gray3(_scale16(g16)), 0),
        # PIL reads 16-bit RGB PNG as 8-bit keeping the high byte: within 1 of the rounded scaling.
        "16-bit RGB PNG": ("png", _png_rgb16(rgb16), _scale16(rgb16), 1),
        "CMYK JPEG": (
            "jpg",
            _encode(Image.fromarray(smooth).convert("CMYK"), "JPEG", quality=100),
            smooth,
            3,
        ),
        "grayscale JPEG": ("jpg", _encode(gray, "JPEG", quality=100), _gray3(np.array(gray)), 2),
        "palette with transparency": (
            "png",
            _encode(pal, "PNG", transparency=3),
            np.array(pal.convert("RGB")),
            0,
        ),
        "grey + alpha (LA)": (
            "png",
            _encode(Image.fromarray(rgb).convert("LA"), "PNG"),
            _gray3(np.array(gray)),
            0,
        ),
        "1-bit": ("png", _encode(gray.convert("1"), "PNG"), np.array(gray.convert("1").convert("RGB")), 0),
        "RGBA": ("png", _encode(Image.fromarray(rgb).convert("RGBA"), "PNG"), rgb, 0),
        "float TIFF in [0, 1] (F)": (
            "tif",
            _encode(Image.fromarray(f01, "F"), "TIFF"),
            _gray3(np.rint(f01 * 255)),
            0,
        ),
        "float TIFF over 1 (F)": (
            "tiff",
            _encode(Image.fromarray(f255, "F"), "TIFF"),
            _gray3(np.rint(f255).clip(0, 255)),
            0,
        ),
        "32-bit int TIFF (I)": (
            "tif",
            _encode(Image.fromarray(g16.astype(np.int32), "I"), "TIFF"),
            _gray3(_scale16(g16)),
            0,
        ),
        "BMP": ("bmp", _encode(Image.fromarray(rgb), "BMP"), rgb, 0),
        "PPM": ("ppm", _encode(Image.fromarray(rgb), "PPM"), rgb, 0),
        "GIF": ("gif", _encode(pal, "GIF"), np.array(pal.convert("RGB")), 0),
        "lossless WebP": ("webp", _encode(Image.fromarray(rgb), "WEBP", lossless=True), rgb, 0),
    }


ODD = _odd_images()


@pytest.fixture
def decodes(monkeypatch) -> dict[str, list]:
    """Spies on every pixel decoder (torchvision.io's and PIL's): ``{"tv": [bytes], "pil": [size]}``.
    A decode of the pixel bomb is recorded and then refused, so even code that would decode it
    never allocates the gigabytes."""
    calls: dict[str, list] = {"tv": [], "pil": []}
    bomb = _pixel_bomb()

    def tv_spy(real):
        def spy(data, *args, **kwargs):
            raw = data.numpy().tobytes()
            calls["tv"].append(raw)
            if raw == bomb:
                raise RuntimeError("the pixel bomb reached torchvision's decoder")
            return real(data, *args, **kwargs)

        return spy

    monkeypatch.setattr(decode, "decode_jpeg", tv_spy(decode.decode_jpeg))
    real_load = ImageFile.ImageFile.load

    def pil_spy(self):
        calls["pil"].append(self.size)
        if self.size == (BOMB_SIDE, BOMB_SIDE):
            raise RuntimeError("the pixel bomb reached PIL's decoder")
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", pil_spy)
    return calls


def _bomb_decoded(calls: dict[str, list]) -> bool:
    return _pixel_bomb() in calls["tv"] or (BOMB_SIDE, BOMB_SIDE) in calls["pil"]


def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _with_lying_member(path, good: dict[str, dict[str, bytes]], key: str, cls: bytes) -> None:
    """Write ``path``: the samples ``good``, then ``key`` whose .jpg header claims 40 GB and
    holds 512 bytes (the whole tar is a few KB)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for k, files in good.items():
            for ext, data in files.items():
                _member(tf, f"{k}.{ext}", data)
        _member(tf, f"{key}.cls", cls)
    raw = buf.getvalue().rstrip(b"\0")  # drop the end-of-archive blocks: the lie comes next
    raw += b"\0" * (-len(raw) % 512)
    liar = tarfile.TarInfo(f"{key}.jpg")
    liar.size = FORTY_GB
    path.write_bytes(raw + liar.tobuf(format=tarfile.GNU_FORMAT) + b"y" * 512 + b"\0" * 1024)


@pytest.fixture
def bounded_reads(monkeypatch) -> list:
    """Every read of a tar member's data; an unbounded one (or one over 64 MiB) fails the test
    instead of trying to allocate what the header claims."""
    sizes: list = []

    class Spy(tarfile.ExFileObject):
        def read(self, size=-1):
            sizes.append(size)
            if size is None or size < 0 or size > 64 * 2**20:
                raise AssertionError(f"unbounded read({size}) of a tar member")
            return super().read(size)

    monkeypatch.setattr(tarfile.TarFile, "fileobject", Spy)
    return sizes


BAD = {
    "s0_2": ("jpg", _pixel_bomb()),
    "s0_9": ("jpg", b"\xff\xd8\xff not an image at all"),
    **{f"s0_{i}": ("png", data) for i, data in zip((17, 18), DAMAGED_PNGS.values())},
}


ODD_AT = {f"s0_{i}": name for i, name in zip([0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16], ODD)}


LIAR = "s1_3"  # the last sample of shard 1: its .jpg header claims 40 GB


def _hostile_shards(make_data_shards):
    """Shard 0: 20 samples, 15 of them odd images and 2 bad ones (the pixel bomb, garbage);
    shard 1: 4 samples, the last with a tar member claiming 40 GB."""

    def edit(shard, i, files):
        key = f"s{shard}_{i}"
        if key in ODD_AT:
            ext, data, _, _ = ODD[ODD_AT[key]]
            return {ext: data, "cls": files["cls"]}
        if key in BAD:
            ext, data = BAD[key]
            return {ext: data, "cls": files["cls"]}
        return files

    shards = make_data_shards([20, 4], edit=edit)
    shard1 = shards / "train-000001.tar"
    with tarfile.open(shard1) as tf:
        members = {m.name: tf.extractfile(m).read(m.size) for m in tf.getmembers()}
    good = {f"s1_{i}": {"jpg": members[f"s1_{i}.jpg"], "cls": members[f"s1_{i}.cls"]} for i in range(3)}
    _with_lying_member(shard1, good, LIAR, members[f"{LIAR}.cls"])
    return shards
