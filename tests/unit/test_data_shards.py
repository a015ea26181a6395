"""Shard writers: folder and digits round trips, dataset.json, atomic and non-clobbering writes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from support.data_shards import COLORS, _add_unrelated_files, _assert_clean, _assert_one_complete_data_set

from vit_dist.core.errors import DataError
from vit_dist.data import shards as shards_cli
from vit_dist.data import writers as shards_mod
from vit_dist.data.meta import read_meta
from vit_dist.data.tar_reader import read_slice


def _read_all(directory, split):
    meta = read_meta(directory)
    out = []
    for s in meta["splits"][split]["shards"]:
        out += list(read_slice(str(directory / s["name"])))
    return meta, out


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


def test_an_interrupted_first_write_leaves_nothing_behind(folder, tmp_path, monkeypatch):
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
    assert list(out.iterdir()) == []  # no index, no shard under a final name, no staging directory
    monkeypatch.setattr(shards_mod._ShardSink, "add", real_add)
    shards_mod.write_shards(str(folder), out, shard_samples=4, progress=False)
    assert read_meta(out)["splits"]["train"]["num_samples"] == 15


def test_overwrite_removes_only_the_shards_the_old_index_lists(folder, tmp_path):
    out = tmp_path / "out"
    shards_mod.write_shards(str(folder), out, shard_samples=2, progress=False)  # 8 train shards
    _add_unrelated_files(out)
    shards_mod.write_shards(str(folder), out, shard_samples=100, progress=False, overwrite=True)
    assert _assert_one_complete_data_set(out) == 1
    assert not (out / "train-000001.tar").exists()  # listed by the old index: replaced
    _assert_clean(out)


def test_overwrite_never_removes_a_name_the_old_index_lists_outside_its_directory(folder, tmp_path):
    out = tmp_path / "out"
    shards_mod.write_shards(str(folder), out, shard_samples=100, progress=False)
    victims = [tmp_path / "victim.tar", tmp_path / "abs-victim.tar", tmp_path / "linked-victim.tar"]
    for victim in victims:
        victim.write_bytes(b"not yours")
    (out / "escape.tar").symlink_to(victims[2])
    _add_unrelated_files(out)
    meta = read_meta(out)
    for name in ("../victim.tar", str(victims[1]), "escape.tar", "dataset.json", "pipe:rm -rf x"):
        meta["splits"]["train"]["shards"].append({"name": name, "num_samples": 1, "num_bytes": 1})
    (out / "dataset.json").write_text(json.dumps(meta))
    shards_mod.write_shards(str(folder), out, shard_samples=100, progress=False, overwrite=True)
    assert all(v.read_bytes() == b"not yours" for v in victims)
    assert (out / "escape.tar").is_symlink()  # unsafe names are not removed, not even a symlink
    assert _assert_one_complete_data_set(out) == 1


def test_overwrite_refuses_to_replace_a_shard_named_file_the_old_index_does_not_list(folder, tmp_path):
    out = tmp_path / "out"
    shards_mod.write_shards(str(folder), out, shard_samples=100, progress=False)
    (out / "train-000003.tar").write_bytes(b"someone else's")
    _add_unrelated_files(out)
    with pytest.raises(DataError, match=r"train-000003.tar is not listed by a dataset.json there"):
        shards_mod.write_shards(str(folder), out, shard_samples=2, progress=False, overwrite=True)
    assert (out / "train-000003.tar").read_bytes() == b"someone else's"
    assert _assert_one_complete_data_set(out) == 1 and not list(out.glob(".vit_dist-staging-*"))


# (function of the writer module to die in, its call number that dies, which data set must be left)
KILL_POINTS = [
    ("write_meta", 1, "old"),  # before the switch
    ("_remove_listed", 1, "new"),  # switched to the staged shards, old files still there
    ("_give_final_name", 3, "new"),  # old files removed, some final names given
    ("write_meta", 2, "new"),  # every final name given, the index still lists staged files
    ("_remove_leftovers", 2, "new"),  # final index written, staging directory still there
]


@pytest.mark.parametrize(("function", "call", "left"), KILL_POINTS)
def test_a_writer_killed_while_publishing_leaves_one_complete_data_set(
    folder, tmp_path, monkeypatch, function, call, left
):
    out = tmp_path / "out"
    shards_mod.write_shards(str(folder), out, shard_samples=4, progress=False)  # old: 4 train shards
    _add_unrelated_files(out)
    real, calls = getattr(shards_mod, function), []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt("killed")  # nothing after this point of the writer runs
        return real(*a, **k)

    monkeypatch.setattr(shards_mod, function, dying)
    with pytest.raises(KeyboardInterrupt):
        shards_mod.write_shards(str(folder), out, shard_samples=6, progress=False, overwrite=True)
    assert _assert_one_complete_data_set(out) == {"old": 4, "new": 3}[left]
    monkeypatch.setattr(shards_mod, function, real)
    shards_mod.write_shards(str(folder), out, shard_samples=5, progress=False, overwrite=True)
    assert _assert_one_complete_data_set(out) == 3
    _assert_clean(out)


def test_publishing_copies_the_shards_where_hard_links_are_not_supported(folder, tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted", str(dst))  # what a FUSE mount answers

    monkeypatch.setattr(shards_mod.os, "link", no_links)
    out = tmp_path / "out"
    shards_mod.write_shards(str(folder), out, shard_samples=4, progress=False)
    _add_unrelated_files(out)
    shards_mod.write_shards(str(folder), out, shard_samples=6, progress=False, overwrite=True)
    assert _assert_one_complete_data_set(out) == 3
    _assert_clean(out)


@pytest.mark.parametrize(
    "bad",
    [
        ["--img-size", "0"],
        ["--shard-samples", "-1"],
        ["--shard-samples", "0"],
        ["--shard-bytes", "0"],
        ["--shard-bytes", "nan"],
        ["--resize", "0"],
        ["--workers", "0"],
    ],
)
def test_the_cli_refuses_sizes_that_write_nothing(folder, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as refused:
        shards_cli.main(["--from-folder", str(folder), "--out", str(tmp_path / "out"), *bad])
    assert refused.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {bad[0]}: must be at least 1" in errors[0]
    assert not (tmp_path / "out").exists()


def test_the_library_refuses_sizes_that_write_nothing(folder, tmp_path):
    for bad in ({"img_size": 0}, {"resize": -3}, {"shard_samples": -1}, {"shard_bytes": 0}, {"workers": -1}):
        with pytest.raises(DataError, match="must be"):
            shards_mod.write_shards(str(folder), tmp_path / "out", progress=False, **bad)
    assert not (tmp_path / "out").exists()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        shards_mod.write_shards(str(tmp_path / "nope"), tmp_path / "out", progress=False)


def test_a_fifo_among_the_images_is_a_skipped_sample_not_a_hang(folder, tmp_path):
    import os
    import time

    os.mkfifo(folder / "train" / "red" / "pipe.jpg")
    start = time.monotonic()
    out = shards_mod.write_shards(str(folder), tmp_path / "out", shard_samples=4, progress=False)
    assert time.monotonic() - start < 60
    meta = read_meta(out)
    assert meta["splits"]["train"]["num_samples"] == 15 and meta["splits"]["train"]["skipped"] == 2
