"""Byte-offset shard indexes: the format, hostile index files, the writer's and ``--index``'s
indexes, and exact epochs with fewer shards than streams that seek instead of streaming through."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
from collections import Counter

import pytest
from support.data_index import _data, _streams, _valid

from vit_dist.core.errors import DataError
from vit_dist.data import DataConfig, ShardLoader, index, tar_reader
from vit_dist.data import shards as shards_cli
from vit_dist.data.index import INDEX_SUFFIX, build_index, read_index, write_index
from vit_dist.data.meta import read_meta
from vit_dist.data.tar_reader import read_runs
from vit_dist.data.writers import index_shards


def _keys(items):
    return [x["__key__"] if isinstance(x, dict) else x.key for x in items]


def _first_members(path):
    """(offset, key) of each sample's first member, from tarfile itself."""
    out, key = [], None
    with tarfile.open(path) as tf:
        for m in tf:
            if m.isfile() and tar_reader.split_name(m.name)[0] != key:
                key = tar_reader.split_name(m.name)[0]
                out.append((m.offset, key))
    return out


# ---------------------------------------------------------------- the format


def test_index_round_trip_and_seeked_reads(make_data_shards, tmp_path):
    shard = str(make_data_shards([9]) / "train-000000.tar")
    offsets = build_index(shard)
    assert list(offsets[:-1]) == [o for o, _ in _first_members(shard)]
    assert offsets[-1] < os.path.getsize(shard)  # end-of-archive blocks follow the last sample
    write_index(tmp_path / "x.idx", offsets, os.path.getsize(shard))
    assert (tmp_path / "x.idx").stat().st_size == 24 + 8 * 10
    assert read_index(tmp_path / "x.idx", num_samples=9, shard_bytes=os.path.getsize(shard)) == offsets
    got = list(read_runs(shard, [(2, 4), (7, None)], offsets=offsets))
    assert _keys(got) == ["s0_2", "s0_3", "s0_7", "s0_8"] and all(isinstance(x, dict) for x in got)
    assert got[0]["cls"] == next(x for x in read_runs(shard, [(2, 3)]))["cls"]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_are_indexed_at_their_extension_header(tmp_path, fmt):
    path = tmp_path / "long.tar"
    names = [("d" * 120 + f"/sample{i}", ext) for i in range(4) for ext in ("jpg", "cls")]
    with tarfile.open(path, "w", format=fmt) as tf:
        for stem, ext in names:
            data = f"{stem}-{ext}".encode()
            info = tarfile.TarInfo(f"{stem}.{ext}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    offsets = build_index(str(path))
    assert list(offsets[:-1]) == [o for o, _ in _first_members(str(path))]
    with open(path, "rb") as fh:  # the offset is the extension header's, not the member's own
        fh.seek(offsets[1])
        assert fh.read(512)[156:157] in (b"L", b"x")
    got = list(read_runs(str(path), [(1, 3)], offsets=offsets))
    assert _keys(got) == ["d" * 120 + "/sample1", "d" * 120 + "/sample2"]
    assert got[1]["cls"] == ("d" * 120 + "/sample2-cls").encode()


def _hostile(shard, tmp_path):
    size = os.path.getsize(shard)
    good = build_index(shard)
    n = len(good) - 1
    raw = (tmp_path / "good.idx", good)
    write_index(*raw, size)
    body = raw[0].read_bytes()
    cases = {
        "bad magic": b"NOTANIDX" + body[8:],
        "truncated": body[:-5],
        "too short": body[:10],
    }
    past = list(good)
    past[-1] = size + 512
    unordered = list(good)
    unordered[1], unordered[2] = unordered[2], unordered[1]
    unaligned = list(good)
    unaligned[3] += 7
    for name, offsets, shard_bytes in (
        ("past the end", past, size),
        ("non-monotonic", unordered, size),
        ("unaligned", unaligned, size),
        ("stale size", good, size + 1024),
        ("other count", good[:-1], size),
    ):
        write_index(tmp_path / "tmp.idx", offsets, shard_bytes)
        cases[name] = (tmp_path / "tmp.idx").read_bytes()
    return n, size, cases


def test_hostile_index_files_are_one_line_errors(make_data_shards, tmp_path):
    shard = str(make_data_shards([6]) / "train-000000.tar")
    n, size, cases = _hostile(shard, tmp_path)
    expected = {
        "bad magic": "bad magic",
        "truncated": "truncated or corrupt",
        "too short": "bad magic or too short",
        "past the end": "past the end",
        "non-monotonic": "not increasing at sample 1",
        "unaligned": "not at a tar block boundary",
        "stale size": "stale",
        "other count": "stale",
    }
    for name, data in cases.items():
        (tmp_path / "h.idx").write_bytes(data)
        with pytest.raises(DataError, match=expected[name]) as e:
            read_index(tmp_path / "h.idx", num_samples=n, shard_bytes=size)
        assert "\n" not in str(e.value), name
    # Only a regular file is read: a FIFO (no writer: opening it blocking would wait forever)
    # and a device are refused at once.
    os.mkfifo(tmp_path / "fifo.idx")
    for path, kind in ((tmp_path / "fifo.idx", "FIFO"), ("/dev/zero", "device")):
        with pytest.raises(DataError, match=f"is not a regular file .*{kind}"):
            read_index(path, num_samples=n, shard_bytes=size)


def test_a_bad_index_is_one_warning_and_the_shard_is_streamed_through(make_data_shards, tmp_path, caplog):
    shards = make_data_shards([6, 5])
    index_shards(shards)
    shard = str(shards / "train-000000.tar")
    _, _, cases = _hostile(shard, tmp_path)
    expected = sorted(f"s{s}_{i}" for s, n in enumerate([6, 5]) for i in range(n))
    for name, data in cases.items():
        (shards / f"train-000000.tar{INDEX_SUFFIX}").write_bytes(data)
        index._warned.clear()  # once per process and problem: start each case afresh
        loader = ShardLoader(DataConfig(str(shards), data=_data(workers=0), training=False, batch_size=4))
        with caplog.at_level(logging.WARNING, logger="vit_dist.data"):
            caplog.clear()
            keys = [k for b in loader for k, v in zip(b["key"], b["valid"].tolist()) if v]
        assert sorted(keys) == expected, name  # never wrong data
        warnings = [r.getMessage() for r in caplog.records if "reading shard" in r.getMessage()]
        assert len(warnings) == 1 and "from its start instead" in warnings[0], (name, warnings)
        assert loader.bad_samples == 0


# ---------------------------------------------------------------- writers and --index


def test_the_writer_writes_an_index_beside_every_shard(digits_data_dir):
    meta = read_meta(digits_data_dir)
    for split in meta["splits"].values():
        for s in split["shards"]:
            assert s["index"] == s["name"] + INDEX_SUFFIX
            path = str(digits_data_dir / s["name"])
            offsets = read_index(
                digits_data_dir / s["index"], num_samples=s["num_samples"], shard_bytes=s["num_bytes"]
            )
            assert offsets == build_index(path)


def test_index_cli_rebuilds_the_writers_indexes_and_is_idempotent(digits_data_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(digits_data_dir, copy)
    for idx in copy.glob(f"*{INDEX_SUFFIX}"):
        idx.unlink()
    assert shards_cli.main(["--index", str(copy)]) == 0
    assert "train: 1437 samples in 90 shards indexed" in capsys.readouterr().out
    for idx in digits_data_dir.glob(f"*{INDEX_SUFFIX}"):
        assert (copy / idx.name).read_bytes() == idx.read_bytes()  # the writer's offsets, exactly
    stamp = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    assert shards_cli.main(["--index", str(copy)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == stamp  # nothing rewritten


def test_index_cli_on_webdataset_shardwriter_shards_without_dataset_json(tmp_path, capsys):
    import webdataset as wds  # a dependency of the package: never skipped

    out = tmp_path / "wds"
    out.mkdir()
    from PIL import Image

    with wds.ShardWriter(str(out / "imagenet-val-%04d.tar"), maxcount=7, verbose=0) as sink:
        for i in range(17):
            jpg = io.BytesIO()
            Image.new("RGB", (16, 16), (15 * i, 0, 0)).save(jpg, "JPEG")
            sink.write({"__key__": f"img{i:05d}", "jpg": jpg.getvalue(), "cls": i % 10})
    assert shards_cli.main(["--index", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "val: 17 samples in 3 shards indexed" in printed
    meta = read_meta(out)
    assert [s["num_samples"] for s in meta["splits"]["val"]["shards"]] == [7, 7, 3]
    assert meta["classes"] == [str(c) for c in range(10)]  # labels 0..9 of the digits
    for s in meta["splits"]["val"]["shards"]:
        path = str(out / s["name"])
        offsets = read_index(
            out / s["index"], num_samples=s["num_samples"], shard_bytes=os.path.getsize(path)
        )
        assert list(offsets[:-1]) == [o for o, _ in _first_members(path)]
        streamed = list(read_runs(path, [(0, None)]))
        for i in range(s["num_samples"]):  # a seek to any sample reads exactly that sample
            assert list(read_runs(path, [(i, i + 1)], offsets=offsets)) == [streamed[i]]
    # the directory is now a data set the loader reads exactly once, seeking
    loader = ShardLoader(
        DataConfig(str(out), data=_data(workers=0), split="val", training=False, batch_size=4)
    )
    keys = [k for b in loader for k, v in zip(b["key"], b["valid"].tolist()) if v]
    assert sorted(keys) == [f"img{i:05d}" for i in range(17)]


def test_index_cli_refuses_a_wrong_count_and_a_compressed_shard(make_data_shards, tmp_path, capsys):
    shards = make_data_shards([4, 4])
    meta = read_meta(shards)
    meta["splits"]["train"]["shards"][1]["num_samples"] = 5
    meta["splits"]["train"]["num_samples"] = 9
    (shards / "dataset.json").write_text(json.dumps(meta))
    assert shards_cli.main(["--index", str(shards)]) == 2
    assert "holds 5 samples, it holds 4: correct the count first" in capsys.readouterr().err
    gz = tmp_path / "gz"
    gz.mkdir()
    with tarfile.open(gz / "train-0.tar", "w:gz") as tf:
        tf.addfile(tarfile.TarInfo("a.cls"), io.BytesIO(b""))
    assert shards_cli.main(["--index", str(gz)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot index shard" in err[0] and "a plain, complete tar?" in err[0]


# ---------------------------------------------------------------- exact epochs, fewer shards than streams


class _Counting:
    """A local shard file that counts the bytes read from it (tar_reader._open_local)."""

    total = 0

    def __init__(self, path):
        self.f = open(path, "rb", buffering=0)  # noqa: SIM115  closed by tar_reader

    def read(self, size=-1):
        data = self.f.read(size)
        _Counting.total += len(data)
        return data

    def seek(self, *a):
        return self.f.seek(*a)

    def close(self):
        self.f.close()


def _bytes_read(shards, world, workers, monkeypatch, train=True):
    monkeypatch.setattr(tar_reader, "_open_local", _Counting)
    _Counting.total = 0
    cfg = DataConfig(str(shards), data=_data(workers=workers, shuffle_buffer=8), training=train, batch_size=4)
    per_rank = [_streams(ShardLoader(cfg, rank=r, world_size=world)) for r in range(world)]
    return _Counting.total, per_rank


def test_two_ranks_three_workers_over_two_shards_seek_and_see_every_sample_once(
    make_data_shards, monkeypatch, caplog
):
    sizes = [40, 33]
    shards = make_data_shards(sizes)
    split_bytes = sum(os.path.getsize(shards / f"train-{s:06d}.tar") for s in range(2))
    streamed, _ = _bytes_read(shards, 2, 3, monkeypatch)
    index_shards(shards)
    with caplog.at_level(logging.INFO, logger="vit_dist.data"):
        seeked, per_rank = _bytes_read(shards, 2, 3, monkeypatch)
    expected = Counter(f"s{s}_{i}" for s, n in enumerate(sizes) for i in range(n))
    assert Counter(k for streams in per_rank for batches in streams for k in _valid(batches)) == expected
    counts = [sum(len(b) for b in streams) for streams in per_rank]
    assert counts[0] == counts[1] > 0  # equal batch counts on every rank
    assert len({len(b) for streams in per_rank for b in streams}) == 1  # and on every stream
    # 6 streams over 2 shards: streaming through reads the first part of each shard several times
    assert seeked <= split_bytes and streamed > 1.3 * split_bytes, (seeked, split_bytes, streamed)
    assert "2 indexed), 2 ranks x 3 loader workers = 6 streams; read amplification 1.00" in caplog.text


def test_read_amplification_of_four_streams_sharing_one_shard(make_data_shards, monkeypatch, caplog, capsys):
    shards = make_data_shards([100])
    split_bytes = os.path.getsize(shards / "train-000000.tar")
    with caplog.at_level(logging.INFO, logger="vit_dist.data"):
        streamed, _ = _bytes_read(shards, 2, 2, monkeypatch)
    assert "read amplification 2.50 (bytes read / bytes of the split); index the shards" in caplog.text
    index_shards(shards)
    seeked, _ = _bytes_read(shards, 2, 2, monkeypatch)
    with capsys.disabled():
        print(
            f"\n[read amplification, 1 shard x 4 streams] streaming through: {streamed / split_bytes:.2f} "
            f"({streamed} B), seeking: {seeked / split_bytes:.2f} ({seeked} B) of {split_bytes} B"
        )
    assert 2.3 < streamed / split_bytes < 2.7 and seeked / split_bytes <= 1.0


@pytest.mark.parametrize("indexed", [True, False])
def test_evaluation_of_two_shards_fits_any_topology_exactly_once(make_data_shards, caplog, indexed):
    sizes = [25, 26]
    shards = make_data_shards(sizes, split="val")
    if indexed:
        index_shards(shards)
    cfg = DataConfig(str(shards), data=_data(workers=8), split="val", training=False, batch_size=4)
    with caplog.at_level(logging.INFO, logger="vit_dist.data"):
        loaders = [ShardLoader(cfg, rank=r, world_size=4) for r in range(4)]
    workers = {lo.cfg.data.workers for lo in loaders}
    # Indexed: re-split over as many workers as a rank has batches (13 samples: 4 batches of 4);
    # without an index: capped to the shards.
    assert workers == ({4} if indexed else {1})
    lines = [r.getMessage() for r in caplog.records if "read amplification" in r.getMessage()]
    assert len(lines) == 1  # rank 0 only, one line
    if indexed:
        assert (
            "4 ranks x 4 loader workers = 16 streams (data.workers=8 capped: a rank has 4 batch(es))"
            in lines[0]
        )
        assert "read amplification 1.00" in lines[0]
    else:
        assert "4 ranks x 1 loader workers = 4 streams (data.workers=8 capped" in lines[0]
    per_rank = [_streams(lo) for lo in loaders]
    keys = [k for streams in per_rank for b in streams for k in _valid(b)]
    assert sorted(keys) == sorted(f"s{s}_{i}" for s, n in enumerate(sizes) for i in range(n))
    assert len({sum(len(b) for b in streams) for streams in per_rank}) == 1


# ---------------------------------------------------------------- http(s) shards: byte ranges


def test_an_index_listed_outside_the_directory_is_refused_at_start_up(make_data_shards):
    shards = make_data_shards([4, 4])
    meta = json.loads((shards / "dataset.json").read_text())
    meta["splits"]["train"]["shards"][1]["index"] = "../elsewhere.idx"
    (shards / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"lists index '../elsewhere.idx', which is not a file inside"):
        ShardLoader(DataConfig(str(shards), data=_data(workers=0), batch_size=4))
