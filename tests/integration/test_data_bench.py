"""Smoke test of the data benchmark: it runs at a tiny size and reports positive numbers (no speed claims)."""

from __future__ import annotations

import json

from vit_dist.data import bench


def test_bench_runs_and_reports_numbers(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--size", "32", "--scales", "1", "--images", "8", "--workers", "1", "--batch-size", "2"]
    result = bench.main([*args, "--seconds", "0.05", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert {(r["op"], r["backend"]) for r in result["decode"]} == {
        (op, b) for op in ("train RRC", "eval crop") for b in ("pil", "tv", "auto")
    }
    assert all(r["img_per_s"] > 0 for r in result["decode"] + result["loaders"])
    assert [r["loader"] for r in result["loaders"]] == [
        "vit_dist shards",
        "vit_dist uint8",
        "ImageFolder+PIL",
    ]


def test_seek_mode_compares_reading_a_shared_shard_with_and_without_its_index(tmp_path):
    args = ["--modes", "seek", "--size", "32", "--images", "16", "--batch-size", "2", "--seek-streams", "4"]
    result = bench.main([*args, "--seconds", "0.05"])
    assert "decode" not in result and "loaders" not in result
    seek = {r["reading"]: r for r in result["seek"]}
    assert set(seek) == {"index (seek)", "no index (stream through)"}
    assert all(r["streams"] == 4 and r["shards"] == 1 and r["img_per_s"] > 0 for r in seek.values())
    # Four streams share the shard: streaming through reads its first quarter four times, its
    # second three times, ... (2.5 times in all); seeking reads each sample once.
    assert seek["index (seek)"]["read_amplification"] < 1.0
    assert 2.3 < seek["no index (stream through)"]["read_amplification"] < 2.7
    assert all(r["read_only_samples_per_s"] > 0 and r["first_round_s"] > 0 for r in seek.values())
