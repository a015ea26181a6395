"""CI smoke of every bench mode at tiny sizes, so that the benchmark CLI never rots (no speed claims)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from vit_dist.models import create_model, flops_per_image

ROOT = Path(__file__).resolve().parents[2]


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
    assert r["peak_tflops_datasheet"] is None and r["train_mfu_datasheet"] is None  # CPU: none
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


GPU_SCRIPT_TOY_SIZES = {
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
    "BENCH_TRAIN_MODELS": "vit_tiny_patch16_224 vit_tiny_patch16_224",
    "BENCH_TRAIN_PRECISIONS": "fp32 bf16",
    "BENCH_TRAIN_STEPS": "4",
    "BENCH_TRAIN_LOG_EVERY": "2",
    "BENCH_WHEELS": "",  # the packages are installed here (./.whl holds the GPU machine's wheels)
    "BENCH_ALLOW_CPU": "1",  # a smoke run of the script: without it, no GPU is a refusal
}


def _gpu_script(out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "launch" / "bench_gpu.sh"), str(out)],
        env={**os.environ, "PYTHON": sys.executable, **GPU_SCRIPT_TOY_SIZES, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_gpu_bench_script_refuses_to_run_without_a_gpu_unless_told_it_is_a_smoke_run(tmp_path):
    out = tmp_path / "gpu"
    proc = _gpu_script(out, BENCH_ALLOW_CPU="0", CUDA_VISIBLE_DEVICES="")  # no GPU, whatever the host
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    line = (
        "bench_gpu: no CUDA device visible to torch: run this on a GPU machine (BENCH_ALLOW_CPU=1 "
        "with toy BENCH_* sizes smoke-runs it on the CPU)"
    )
    assert proc.stdout.strip().splitlines()[-1] == line  # the script's output, also in log.txt
    assert (out / "log.txt").read_text().strip().splitlines()[-1] == line
    assert (out / "results.jsonl").read_text() == ""  # nothing was measured


def test_gpu_bench_script_runs_every_measurement(tmp_path):
    # launch/bench_gpu.sh is what a leased GPU machine runs; here it runs at toy sizes on CPU so
    # that it cannot rot between GPU sessions.
    out = tmp_path / "gpu"
    proc = _gpu_script(out, BENCH_SCRATCH=str(tmp_path / "scratch"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    modes = [(r["mode"], r.get("compile")) for r in records]
    assert modes == [
        ("model", True),
        ("run", True),
        ("run", True),
        ("data", None),
        ("model", False),
        ("compare-timm", True),
    ]
    assert {r["loader"] for r in records[3]["loaders"]} == {
        "vit_dist shards",
        "vit_dist uint8",
        "ImageFolder+PIL",
    }
    assert all(r["command"].startswith("python -m vit_dist.bench ") for r in records if r["mode"] != "run")
    assert records[0]["train_images_per_sec"] > 0 and records[5]["train_ratio"] > 0
    # The two training runs: FSDP under torchrun, then one plain process, as configured.
    fsdp, single = records[1], records[2]
    assert "torch.distributed.run" in fsdp["command"] and "torch.distributed.run" not in single["command"]
    assert (fsdp["strategy"], fsdp["precision"], single["strategy"], single["precision"]) == (
        "fsdp",
        "fp32",
        "ddp",
        "bf16",
    )
    for r in (fsdp, single):
        assert r["steps"] == 4 and r["windows"] == 1  # 2 logged windows, the first left out
        assert r["images_per_sec"] > 0 and 0 <= r["data_wait_frac_mean"] <= 1
        assert r["loader_workers_per_rank"] == 1 and r["batch_size_per_device"] == 2
        assert "train.sync_debug=warn" in r["command"] and r["sync_warnings"] == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["0-vit_tiny_patch16_224-fp32-torchrun", "1-vit_tiny_patch16_224-bf16-single"]
    for name in runs:
        assert len((out / "runs" / name / "metrics.jsonl").read_text().splitlines()) == 2
        assert not list((out / "runs" / name).rglob("*.pt"))  # checkpoints stay in the scratch dir
    assert "0 failed, 0 skipped" in (out / "log.txt").read_text()


def test_gpu_bench_script_skips_what_is_past_its_deadline(tmp_path):
    out = tmp_path / "gpu"
    proc = _gpu_script(
        out,
        BENCH_T0=str(int(time.time()) - 100),  # a deadline 100 s in the past
        BENCH_DEADLINE_S="1",
        BENCH_MODELS="vit_tiny_patch16_224 vit_small_patch16_224",
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    log = (out / "log.txt").read_text()
    # 2 compiled models, 2 runs, data, 2 eager models, compare-timm: all past a 1 s deadline
    assert log.count("SKIPPED (deadline 1s") == 8 and "0 failed, 8 skipped" in log, log
    assert (out / "results.jsonl").read_text() == ""


def test_bench_run_mode_refuses_a_directory_that_is_no_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vit_dist.bench", "run", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"error: {tmp_path} is not a finished training run directory ("
        + str(tmp_path / "metrics.jsonl")
        + " missing)"
    )
