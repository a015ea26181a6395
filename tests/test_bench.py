"""CI smoke of every bench mode at tiny sizes, so that the benchmark CLI never rots (no speed claims)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from vit_dist.models import create_model, flops_per_image

ROOT = Path(__file__).resolve().parents[1]


def _bench(args: list[str], out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "vit_dist.bench", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_bench_model_mode(tmp_path):
    r = _bench(
        ["model", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "2", "--steps", "2"],
        tmp_path / "m.json",
    )
    assert r["train_images_per_sec"] > 0 and r["infer_images_per_sec"] > r["train_images_per_sec"]
    assert r["peak_tflops_measured"] > 0 and 0 < r["train_mfu"] < 1 and r["max_memory_mb"] > 0
    with torch.device("meta"):
        expected = flops_per_image(create_model("vit_tiny_patch16_224", img_size=32)) / 1e9
    assert abs(r["gflops_per_image"] - expected) < 1e-9


def test_bench_compare_timm_mode(tmp_path):
    r = _bench(
        [
            "compare-timm",
            "--model",
            "vit_tiny_patch16_224",
            "--img-size",
            "32",
            "--batch-size",
            "2",
            "--steps",
            "2",
        ],
        tmp_path / "c.json",
    )
    for kind in ("train", "infer"):
        assert r[f"{kind}_ours_images_per_sec"] > 0 and r[f"{kind}_timm_images_per_sec"] > 0
        assert (
            abs(
                r[f"{kind}_ratio"] - r[f"{kind}_timm_images_per_sec"] ** -1 * r[f"{kind}_ours_images_per_sec"]
            )
            < 1e-6
        )
    assert r["optimizers"] == "ours: vit_dist, timm: timm"  # each trainer's own AdamW by default


def test_bench_data_mode(tmp_path):
    args = [
        "data",
        "--size",
        "32",
        "--scales",
        "1",
        "--images",
        "8",
        "--workers",
        "1",
        "--batch-size",
        "2",
        "--seconds",
        "0.05",
    ]
    r = _bench(args, tmp_path / "d.json")
    assert all(x["img_per_s"] > 0 for x in r["decode"] + r["loaders"])


def test_gpu_bench_script_runs_every_measurement(tmp_path):
    # launch/bench_gpu.sh is what a leased GPU machine runs; here it runs at toy sizes on CPU so
    # that it cannot rot between GPU sessions.
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "BENCH_BATCH": "2",
        "BENCH_IMG": "32",
        "BENCH_STEPS": "1",
        "BENCH_WARMUP": "1",
        "BENCH_PRECISION": "fp32",
        "BENCH_MODELS": "vit_tiny_patch16_224",
        "BENCH_COMPARE_MODEL": "vit_tiny_patch16_224",
        "BENCH_DATA_WORKERS": "1",
        "BENCH_DATA_SECONDS": "0.05",
        "BENCH_DATA_SIZE": "32",
    }
    out = tmp_path / "gpu"
    proc = subprocess.run(
        ["bash", str(ROOT / "launch" / "bench_gpu.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    modes = [(r["mode"], r.get("compile")) for r in records]
    assert modes == [("model", True), ("model", False), ("compare-timm", True), ("data", None)]
    assert {r["loader"] for r in records[3]["loaders"]} == {
        "vit_dist shards",
        "vit_dist uint8",
        "ImageFolder+PIL",
    }
    assert all(r["command"].startswith("python -m vit_dist.bench ") for r in records)
    assert records[0]["train_images_per_sec"] > 0 and records[2]["train_ratio"] > 0
    assert "0 failed" in (out / "log.txt").read_text()
