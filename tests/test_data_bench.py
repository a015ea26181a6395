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
