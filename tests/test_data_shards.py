"""Shard writers: folder and digits round trips, dataset.json, atomic and non-clobbering writes."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from vit_dist.data import shards as shards_cli
from vit_dist.data import writers as shards_mod
from vit_dist.data.meta import read_meta
from vit_dist.data.tar_reader import read_slice
from vit_dist.errors import DataError

COLORS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}  # class -> colour


def _read_all(directory, split):
    meta = read_meta(directory)
    out = []
    for s in meta["splits"][split]["shards"]:
        out += list(read_slice(str(directory / s["name"])))
    return meta, out


@pytest.fixture
def folder(tmp_path):
    """train/ and val/ ImageFolder trees of solid-colour images in several formats and sizes."""
    root = tmp_path / "folder"
    for split, n in (("train", 5), ("val", 2)):
        for name, rgb in COLORS.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                im = Image.new("RGB", (60 + 10 * i, 40), rgb)
                im.save(d / f"img{i}.{['jpg', 'png', 'webp'][i % 3]}")
    (root / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff not an image")
    return root


def test_folder_round_trip_images_labels_resize_and_index(folder, tmp_path):
    out = shards_mod.write_shards(str(folder), tmp_path / "out", resize=20, shard_samples=4, progress=False)
    meta, samples = _read_all(out, "train")
    assert meta["classes"] == sorted(COLORS)
    assert meta["splits"]["train"]["num_samples"] == 15 and meta["splits"]["train"]["skipped"] == 1
    assert [s["num_samples"] for s in meta["splits"]["train"]["shards"]] == [4, 4, 4, 3]
    assert meta["splits"]["val"]["num_samples"] == 6
    for s in samples:
        assert set(s) >= {"__key__", "jpg", "cls"} and s["jpg"][:3] == b"\xff\xd8\xff"
        im = Image.open(io.BytesIO(s["jpg"]))
        assert min(im.size) == 20  # shorter side resized
        colour = np.asarray(im.convert("RGB")).reshape(-1, 3).mean(0)
        label = int(s["cls"])
        assert np.abs(colour - COLORS[meta["classes"][label]]).max() < 20  # the right image for its label


def test_shard_bytes_limit(folder, tmp_path):
    out = shards_mod.write_shards(
        str(folder), tmp_path / "out", shard_samples=None, shard_bytes=8000, progress=False
    )
    shards = read_meta(out)["splits"]["train"]["shards"]
    assert len(shards) > 1 and sum(s["num_samples"] for s in shards) == 15
    assert all(s["num_bytes"] <= 8000 + 10240 for s in shards)  # + tar's end-of-archive record padding


def test_jpeg_sources_are_stored_byte_for_byte_without_resize(folder, tmp_path):
    out = shards_mod.write_shards(str(folder), tmp_path / "out", shard_samples=100, progress=False)
    _, samples = _read_all(out, "train")
    originals = {p.read_bytes() for p in (folder / "train").rglob("img*.jpg")}
    stored = {s["jpg"] for s in samples}
    assert originals and originals <= stored


def test_digits_shards_are_real_and_written_once(digits_data_dir):
    meta = read_meta(digits_data_dir)
    assert meta["splits"]["train"]["num_samples"] == 1437 and meta["splits"]["val"]["num_samples"] == 360
    _, samples = _read_all(digits_data_dir, "val")
    labels = np.bincount([int(s["cls"]) for s in samples], minlength=10)
    assert labels.sum() == 360 and labels.min() >= 35  # stratified split of the real digits
    im = Image.open(io.BytesIO(samples[0]["jpg"]))
    assert im.size == (16, 16) and np.asarray(im).std() > 20  # a drawn digit, not a blank
    mtime = (digits_data_dir / "dataset.json").stat().st_mtime_ns
    assert shards_mod.ensure_digits_shards(digits_data_dir, img_size=16) == digits_data_dir
    assert (digits_data_dir / "dataset.json").stat().st_mtime_ns == mtime  # not rewritten
    with pytest.raises(DataError, match="holds other shards"):
        shards_mod.ensure_digits_shards(digits_data_dir, img_size=24)


def test_existing_output_needs_overwrite(folder, tmp_path):
    out = tmp_path / "out"
    shards_mod.write_shards(str(folder), out, shard_samples=100, progress=False)
    with pytest.raises(DataError, match="already holds shards.*--overwrite"):
        shards_mod.write_shards(str(folder), out, shard_samples=100, progress=False)
    assert shards_cli.main(["--from-folder", str(folder), "--out", str(out)]) == 2
    assert (
        shards_cli.main(["--from-folder", str(folder), "--out", str(out), "--overwrite", "--workers", "2"])
        == 0
    )


def test_a_killed_writer_leaves_only_complete_shards(folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_add, calls = shards_mod._ShardSink.add, []

    def dying_add(self, *a):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt("killed")  # mid-way through the second shard
        return real_add(self, *a)

    monkeypatch.setattr(shards_mod._ShardSink, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        shards_mod.write_shards(str(folder), out, shard_samples=4, progress=False)
    assert not (out / "dataset.json").exists()
    assert [p.name for p in out.glob("*.tar")] == ["train-000000.tar"]  # the half shard has no .tar name
    with tarfile.open(out / "train-000000.tar") as tf:
        assert len(tf.getnames()) == 8  # 4 complete samples
    assert list(out.glob(".train-000001.tar.tmp-*"))
    monkeypatch.setattr(shards_mod._ShardSink, "add", real_add)
    shards_mod.write_shards(str(folder), out, shard_samples=4, progress=False, overwrite=True)
    assert not list(out.glob(".*tmp*")) and read_meta(out)["splits"]["train"]["num_samples"] == 15


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        shards_mod.write_shards(str(tmp_path / "nope"), tmp_path / "out", progress=False)
