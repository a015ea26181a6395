"""Hostile and odd images: a pixel bomb, a tar member that claims 40 GB and every image mode a
decoder returns become either 8-bit RGB with the right values or a counted bad sample; never a
crash of a batch, and never an allocation of what a header merely claims."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from vit_dist.data import decode
from vit_dist.data.decode import check_image_size, image_size
from vit_dist.data.pipeline import DataConfig, ShardLoader
from vit_dist.data.tar_reader import BadSample, read_runs
from vit_dist.data.transforms import AugmentConfig, SampleTransform
from vit_dist.errors import DataError

S = 16  # the side of the odd images and of the loader's output: the eval crop is then the identity
BOMB_SIDE = 20000
FORTY_GB = 40 * 2**30


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_rgb16(a: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one): the (H, W, 3) uint16 array ``a``."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w, _ = a.shape
    rows = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16-bit, colour type 2 (RGB)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


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
    monkeypatch.setattr(decode, "decode_image", tv_spy(decode.decode_image))
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


# ---------------------------------------------------------------- the header and the pixel limit


def test_image_size_reads_the_size_from_the_header_of_every_format():
    for name, (_, data, expected, _) in ODD.items():
        assert image_size(data) == (expected.shape[1], expected.shape[0]), name
    wide = _encode(Image.new("RGB", (40, 24)), "JPEG")
    assert image_size(wide) == (40, 24) and image_size(_encode(Image.new("L", (40, 24)), "PNG")) == (40, 24)
    assert image_size(_pixel_bomb()) == (BOMB_SIDE, BOMB_SIDE)
    # Stray bytes, 0xFF 0x00 pairs and fill bytes before a marker: skipped, as libjpeg skips them.
    app0_end = 4 + int.from_bytes(wide[4:6], "big")
    padded = wide[:app0_end] + b"junk\xff\x00" * 100 + b"\xff\xff" + wide[app0_end:]
    assert image_size(padded) == (40, 24)
    assert SampleTransform(AugmentConfig(img_size=8, backend="tv"), train=False).uint8(padded)[0].shape == (
        3,
        8,
        8,
    )
    with pytest.raises(ValueError):
        image_size(b"\xff\xd8\xff\xe0 a JPEG with no frame header")


@pytest.mark.parametrize("backend", ["tv", "pil", "auto"])
@pytest.mark.parametrize("train", [True, False])
def test_a_pixel_bomb_is_refused_from_its_header_before_any_decoder_runs(decodes, backend, train):
    bomb = _pixel_bomb()
    assert len(bomb) < 1000
    transform = SampleTransform(AugmentConfig(img_size=S, backend=backend), train=train)
    with pytest.raises(DataError, match=r"20000x20000 .* over data\.max_image_pixels=89478485"):
        transform.uint8(bomb)
    assert not _bomb_decoded(decodes)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP"])  # torchvision.io's formats and a PIL-only one
@pytest.mark.parametrize("train", [True, False])
def test_max_image_pixels_is_one_limit_for_every_path(fmt, train):
    data = _encode(Image.new("RGB", (64, 48), (30, 60, 90)), fmt)
    assert check_image_size(data, 64 * 48) == (64, 48)
    with pytest.raises(DataError, match="64x48 = 3072 pixels, over data.max_image_pixels=3071"):
        check_image_size(data, 64 * 48 - 1)
    for backend in ("tv", "pil", "auto"):
        fits = SampleTransform(AugmentConfig(img_size=S, backend=backend, max_image_pixels=3072), train=train)
        assert fits.uint8(data)[0].shape == (3, S, S)
        over = SampleTransform(AugmentConfig(img_size=S, backend=backend, max_image_pixels=3071), train=train)
        with pytest.raises(DataError, match="max_image_pixels=3071"):
            over.uint8(data)


# ---------------------------------------------------------------- image modes


@pytest.mark.parametrize("backend", ["tv", "pil", "auto"])
@pytest.mark.parametrize("name", list(ODD))
def test_every_image_mode_decodes_to_8bit_rgb_with_scaled_values(name, backend):
    _, data, expected, tolerance = ODD[name]
    evaluate = SampleTransform(AugmentConfig(img_size=S, crop_pct=1.0, backend=backend), train=False)
    image, _ = evaluate.uint8(data)  # an S x S image, an S x S center crop: the decoded pixels
    assert image.dtype == torch.uint8 and image.shape == (3, S, S)
    diff = np.abs(image.permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
    assert diff.max() <= tolerance, f"{name}: off by up to {diff.max()}"
    train = SampleTransform(AugmentConfig(img_size=S, backend=backend), train=True)
    torch.manual_seed(0)
    image, _ = train.uint8(data)
    assert image.dtype == torch.uint8 and image.shape == (3, S, S)


@pytest.mark.parametrize(
    "wrong", [torch.zeros(3, S, S, dtype=torch.uint16), torch.zeros(4, S, S, dtype=torch.uint8)]
)
def test_a_sample_that_is_not_uint8_rgb_of_the_output_size_is_refused(monkeypatch, wrong):
    from vit_dist.data import transforms

    monkeypatch.setattr(transforms, "decode_random_resized_crop", lambda *a, **k: wrong)
    with pytest.raises(DataError, match=rf"not uint8 \(3, {S}, {S}\)"):
        SampleTransform(AugmentConfig(img_size=S, hflip=0, randaugment_ops=0), train=True).uint8(b"")


# ---------------------------------------------------------------- tar members


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


def test_a_member_over_max_sample_bytes_is_a_bad_sample_never_read(tmp_path, bounded_reads):
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as tf:
        for key, n in (("a", 10), ("b", 5000), ("c", 20)):
            _member(tf, f"{key}.cls", b"1")
            _member(tf, f"{key}.jpg", b"z" * n)
    got = list(read_runs(str(path), [(0, 3)], max_bytes=2048))
    assert [g["__key__"] if isinstance(g, dict) else "bad" for g in got] == ["a", "bad", "c"]
    assert got[2]["jpg"] == b"z" * 20  # the sample after the big one is still read
    assert "b.jpg declares 5000 bytes, over data.max_sample_bytes=2048" in got[1].reason
    assert max(bounded_reads) <= 2**20  # streamed past in bounded chunks, never read whole


def test_a_member_claiming_40_gb_ends_the_shard_without_allocating(tmp_path, bounded_reads):
    path = tmp_path / "liar.tar"
    _with_lying_member(path, {"a": {"cls": b"1", "jpg": b"x" * 100}}, "b", b"2")
    assert path.stat().st_size < 10_000
    got = list(read_runs(str(path), [(0, 2)]))
    assert got[0]["jpg"] == b"x" * 100
    assert isinstance(got[1], BadSample) and f"declares {FORTY_GB} bytes" in got[1].reason
    assert max(bounded_reads) <= 64 * 2**20


# ---------------------------------------------------------------- the loader, end to end

BAD = {"s0_2": ("jpg", _pixel_bomb()), "s0_9": ("jpg", b"\xff\xd8\xff not an image at all")}
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


def test_hostile_and_odd_samples_evaluate_to_the_end_decoded_or_counted(
    make_data_shards, decodes, bounded_reads
):
    shards = _hostile_shards(make_data_shards)
    cfg = DataConfig(
        str(shards),
        train=False,
        batch_size=4,
        workers=0,
        augment=AugmentConfig(img_size=S, crop_pct=1.0),
        normalize_in_workers=False,
    )
    loader = ShardLoader(cfg)
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    assert loader.bad_samples == 3 and loader.samples_seen == 24  # the bomb, garbage, the 40 GB claim
    images = {k: img for b in batches for k, img, v in zip(b["key"], b["image"], b["valid"].tolist()) if v}
    assert set(images) == {f"s0_{i}" for i in range(20)} - set(BAD) | {f"s1_{i}" for i in range(3)}
    for key, name in ODD_AT.items():
        _, _, expected, tolerance = ODD[name]
        assert images[key].dtype == torch.uint8
        diff = np.abs(images[key].permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
        assert diff.max() <= tolerance, f"{name}: off by up to {diff.max()}"
    assert not _bomb_decoded(decodes)
    assert max(bounded_reads) <= 64 * 2**20


def test_max_sample_bytes_and_max_image_pixels_reach_the_loader_from_the_config():
    from vit_dist.config import ConfigError, config_from_dict
    from vit_dist.data.pipeline import loader_config

    data = {"train": "/x", "val": "/y", "max_image_pixels": 1000, "max_sample_bytes": 4096}
    cfg = config_from_dict({"train": {"epochs": 1}, "data": data})
    for train in (True, False):
        d = loader_config(cfg, train=train, device=torch.device("cpu"))
        assert d.max_sample_bytes == 4096 and d.augment.max_image_pixels == 1000
    with pytest.raises(ConfigError, match="data.max_image_pixels"):
        config_from_dict({"train": {"epochs": 1}, "data": {"max_image_pixels": 10**9}})


# ---------------------------------------------------------------- predict


def test_predict_reports_a_pixel_bomb_on_one_line_without_decoding_it(tmp_path, decodes):
    from vit_dist.predict import predict

    bomb, good = tmp_path / "bomb.jpg", tmp_path / "good.png"
    bomb.write_bytes(_pixel_bomb())
    good.write_bytes(ODD["16-bit gray PNG (I;16)"][1])
    info = {"img_size": S, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 3}
    out, err = io.StringIO(), io.StringIO()
    failed = predict(
        lambda x: torch.zeros(x.shape[0], 3), info, [str(bomb), str(good)], topk=2, out=out, err=err
    )
    assert failed == 1
    assert err.getvalue().splitlines() == [
        f"error: cannot read image {bomb}: image header declares 20000x20000 = 400000000 pixels, "
        "over data.max_image_pixels=89478485; not decoded"
    ]
    assert out.getvalue().splitlines()[0] == str(good)
    assert not _bomb_decoded(decodes)
