"""Hostile and odd images: a pixel bomb, a tar member that claims 40 GB and every image mode a
decoder returns become either 8-bit RGB with the right values or a counted bad sample; never a
crash of a batch, and never an allocation of what a header merely claims."""

from __future__ import annotations

import io
import tarfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from support.data_hostile import (
    BAD,
    BOMB_SIDE,
    DAMAGED_PNGS,
    FORTY_GB,
    ODD,
    ODD_AT,
    S,
    _bomb_decoded,
    _encode,
    _hostile_shards,
    _member,
    _pixel_bomb,
    _png,
    _with_lying_member,
)

from vit_dist.core.config import AugmentSection, DataSection
from vit_dist.core.errors import DataError
from vit_dist.data.decode import (
    check_image_size,
    decode_random_resized_crop,
    decode_resize_center_crop,
    image_size,
)
from vit_dist.data.pipeline import DataConfig, ShardLoader
from vit_dist.data.tar_reader import BadSample, read_runs
from vit_dist.data.transforms import SampleTransform

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
    assert SampleTransform(DataSection(img_size=8), None, backend="tv").uint8(padded)[0].shape == (3, 8, 8)
    with pytest.raises(ValueError):
        image_size(b"\xff\xd8\xff\xe0 a JPEG with no frame header")


@pytest.mark.parametrize("backend", ["tv", "pil", "auto"])
@pytest.mark.parametrize("train", [True, False])
def test_a_pixel_bomb_is_refused_from_its_header_before_any_decoder_runs(decodes, backend, train):
    bomb = _pixel_bomb()
    assert len(bomb) < 1000
    transform = SampleTransform(DataSection(img_size=S), AugmentSection() if train else None, backend=backend)
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
        augment = AugmentSection() if train else None
        fits = SampleTransform(DataSection(img_size=S, max_image_pixels=3072), augment, backend=backend)
        assert fits.uint8(data)[0].shape == (3, S, S)
        over = SampleTransform(DataSection(img_size=S, max_image_pixels=3071), augment, backend=backend)
        with pytest.raises(DataError, match="max_image_pixels=3071"):
            over.uint8(data)


# ---------------------------------------------------------------- image modes


@pytest.mark.parametrize("backend", ["tv", "pil", "auto"])
@pytest.mark.parametrize("name", list(ODD))
def test_every_image_mode_decodes_to_8bit_rgb_with_scaled_values(name, backend):
    _, data, expected, tolerance = ODD[name]
    evaluate = SampleTransform(DataSection(img_size=S, crop_pct=1.0), None, backend=backend)
    image, _ = evaluate.uint8(data)  # an S x S image, an S x S center crop: the decoded pixels
    assert image.dtype == torch.uint8 and image.shape == (3, S, S)
    diff = np.abs(image.permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
    assert diff.max() <= tolerance, f"{name}: off by up to {diff.max()}"
    train = SampleTransform(DataSection(img_size=S), AugmentSection(), backend=backend)
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
        SampleTransform(DataSection(img_size=S), AugmentSection(hflip=0, randaugment_ops=0)).uint8(b"")


# ---------------------------------------------------------------- tar members


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


@pytest.mark.parametrize("backend", ["tv", "pil", "auto"])
@pytest.mark.parametrize("name", list(DAMAGED_PNGS))
def test_a_damaged_png_raises_instead_of_crashing_the_process(name, backend):
    # Before PNG went to PIL on every backend, torchvision.io segfaulted here: this test process died.
    data = DAMAGED_PNGS[name]
    assert image_size(data) == (S, S)  # a valid header: only the pixel data is short
    with pytest.raises(ValueError, match="PNG pixel data is truncated"):
        decode_random_resized_crop(data, S, backend=backend)
    with pytest.raises(ValueError, match="PNG pixel data is truncated"):
        decode_resize_center_crop(data, S, crop_pct=1.0, backend=backend)


def test_the_png_check_takes_the_exact_pixel_data_of_an_adam7_png_and_refuses_a_byte_less():
    from vit_dist.data.decode import check_png_data

    # 13 x 7 RGB, interlaced: the 7 passes' rows (a filter byte each), every sample 200.
    passes = (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    )
    raw = b""
    for x0, y0, dx, dy in passes:
        w, h = len(range(x0, 13, dx)), len(range(y0, 7, dy))
        raw += (b"\0" + b"\xc8" * 3 * w) * h if w else b""
    exact = _png(13, 7, 8, zlib.compress(raw), interlace=1)
    check_png_data(exact)
    # PIL reads every pixel from exactly these bytes: the check's size is the decoder's.
    assert (np.asarray(Image.open(io.BytesIO(exact)).convert("RGB")) == 200).all()
    with pytest.raises(ValueError, match=f"inflates to {len(raw) - 1} of the {len(raw)} bytes"):
        check_png_data(_png(13, 7, 8, zlib.compress(raw[:-1]), interlace=1))


# ---------------------------------------------------------------- the loader, end to end


def test_hostile_and_odd_samples_evaluate_to_the_end_decoded_or_counted(
    make_data_shards, decodes, bounded_reads
):
    shards = _hostile_shards(make_data_shards)
    cfg = DataConfig(
        str(shards),
        data=DataSection(img_size=S, crop_pct=1.0, workers=0, normalize_on="device"),
        training=False,
        batch_size=4,
    )
    loader = ShardLoader(cfg)
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    # the bomb, garbage, two damaged PNGs, the 40 GB claim
    assert loader.bad_samples == 5 and loader.samples_seen == 24
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
    from vit_dist.core.config import ConfigError, config_from_dict
    from vit_dist.data.pipeline import loader_config

    data = {"train": "/x", "val": "/y", "max_image_pixels": 1000, "max_sample_bytes": 4096}
    cfg = config_from_dict({"train": {"epochs": 1}, "data": data})
    for train in (True, False):
        d = loader_config(
            cfg.data,
            cfg.augment,
            train=train,
            batch_size=cfg.train.batch_size,
            seed=0,
            device=torch.device("cpu"),
        )
        assert d.data.max_sample_bytes == 4096 and d.data.max_image_pixels == 1000
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


def test_predict_reports_a_damaged_png_on_one_line_and_goes_on(tmp_path):
    from vit_dist.predict import predict

    short, good = tmp_path / "short.png", tmp_path / "good.png"
    short.write_bytes(DAMAGED_PNGS["IDAT of 4 of 16 rows"])
    good.write_bytes(ODD["RGBA"][1])
    info = {"img_size": S, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 3}
    out, err = io.StringIO(), io.StringIO()
    failed = predict(
        lambda x: torch.zeros(x.shape[0], 3), info, [str(short), str(good)], topk=2, out=out, err=err
    )
    assert failed == 1
    assert err.getvalue().splitlines() == [
        f"error: cannot read image {short}: PNG pixel data is truncated: it inflates to 196 of the "
        "784 bytes its header declares"
    ]
    assert out.getvalue().splitlines()[0] == str(good)


def test_predict_never_reads_a_fifo_or_a_device_and_goes_on(tmp_path):
    import os
    import time

    from vit_dist.predict import predict

    fifo, good = tmp_path / "fifo.jpg", tmp_path / "good.png"
    os.mkfifo(fifo)
    good.write_bytes(ODD["RGBA"][1])
    info = {"img_size": S, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 3}
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    failed = predict(
        lambda x: torch.zeros(x.shape[0], 3),
        info,
        [str(fifo), "/dev/zero", str(good)],
        topk=2,
        out=out,
        err=err,
    )
    assert time.monotonic() - start < 10  # no wait for a writer, no 8 GB read
    assert failed == 2
    assert err.getvalue().splitlines() == [
        f"error: image {fifo} is not a regular file (a FIFO)",
        "error: image /dev/zero is not a regular file (a character device)",
    ]
    assert out.getvalue().splitlines()[0] == str(good)
