"""``python -m vit_dist.bench MODE ...``: speed numbers that print a table and write JSON.

    model          train-step (forward + backward + AdamW) and inference images/s of one model,
                   MFU against a peak measured on the same device with a large matrix product
                   (and, for a known GPU, against its datasheet peak), max memory
    data           decode + augment images/s per loader worker on real photos, beside a
                   torchvision ImageFolder + PIL baseline (vit_dist.data.bench)
    compare-timm   our model against timm's same architecture: same weights, inputs and
                   precision, interleaved repetitions (A B A B ...), the ratio of medians. Each
                   side steps with its own trainer's AdamW (ours: fused where available; timm:
                   create_optimizer_v2); --same-optimizer gives timm ours, to compare models alone
    run            the figures of a finished training run (its metrics.jsonl): images/s, MFU and
                   the fraction of step time spent waiting for data, the first --skip logging
                   windows (compilation, worker start-up) left out; with the run's loader workers

Examples:
    python -m vit_dist.bench model --model vit_base_patch16_224 --batch-size 256 --precision bf16 --compile
    python -m vit_dist.bench compare-timm --model swin_tiny_patch4_window7_224 --batch-size 8
    python -m vit_dist.bench data --size 224 --workers 2
    python -m vit_dist.bench run runs/imagenet_vit_base --skip 1

Timings synchronise the device around each timed block only; warm-up steps (and compilation)
are excluded. Nothing here asserts a speed: the numbers go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
import yaml
from torch import nn

from .cli.command import exit_process
from .core.errors import ConfigError, DataError, VitDistError
from .data.bench import main as data_main
from .metrics import datasheet_peak, max_memory_mb, measure_matmul_peak
from .models import VitDistModel, create_model, flops_per_image
from .runtime.parallel import apply_compile
from .runtime.precision import DTYPES, autocast
from .training.optim import build_optimizer, param_groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], None], device: torch.device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def make_optimizer(model: torch.nn.Module, device: torch.device, kind: str) -> torch.optim.Optimizer:
    """The AdamW a trainer would build: ``vit_dist`` (our param groups, fused kernel where the
    device has one) or ``timm`` (timm's ``create_optimizer_v2``, what its train.py uses)."""
    if kind == "timm":
        from timm.optim import create_optimizer_v2  # optional: only the timm comparison needs timm

        return create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05)

    nwd = cast(VitDistModel, model).no_weight_decay()  # ours, and timm's ViT / DeiT / Swin (compare-timm)
    return build_optimizer(param_groups(model, 0.05, nwd), 1e-4, device)


def make_steps(
    model: torch.nn.Module,
    batch: int,
    img: int,
    device,
    precision: str,
    num_classes: int,
    optimizer: str = "vit_dist",
):
    """(train_step, infer_step) closures on fixed random inputs."""
    in_chans = cast(VitDistModel, model).in_chans  # ours, and timm's ViT / DeiT / Swin (compare-timm)
    x = torch.randn(batch, in_chans, img, img, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    opt = make_optimizer(model, device, optimizer)

    def train_step():
        model.train()
        with autocast(device, precision):
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            loss = torch.nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step():
        model.eval()
        with autocast(device, precision):
            model(x)

    return train_step, infer_step


def _build(name: str, img: int, compile: bool, device):

    model = create_model(name, img_size=img).to(device)
    if compile:
        apply_compile(model.transformer_blocks())  # exactly as the trainer compiles
    return model


def bench_model(args) -> dict:

    device = torch.device(args.device)
    model = _build(args.model, args.img_size, args.compile, device)
    fpi = flops_per_image(model)
    train_step, infer_step = make_steps(
        model, args.batch_size, args.img_size, device, args.precision, model.num_classes
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_train = statistics.median(_time(train_step, device, args.warmup, args.steps))
    t_infer = statistics.median(_time(infer_step, device, args.warmup, args.steps))
    peak = measure_matmul_peak(device, DTYPES[args.precision])
    sheet = datasheet_peak(device, DTYPES[args.precision])  # what published MFU figures divide by
    train_ips, infer_ips = args.batch_size / t_train, args.batch_size / t_infer
    return {
        "mode": "model",
        "model": args.model,
        **_host(device),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "img_size": args.img_size,
        "precision": args.precision,
        "compile": args.compile,
        "gflops_per_image": fpi / 1e9,  # the architecture's count, MFU's numerator
        "gflops_per_image_executed": flops_per_image(model, executed=True) / 1e9,
        "train_images_per_sec": train_ips,
        "infer_images_per_sec": infer_ips,
        "peak_tflops_measured": peak / 1e12,
        "train_mfu": 3 * fpi * train_ips / peak,
        "infer_mfu": fpi * infer_ips / peak,
        "peak_tflops_datasheet": sheet / 1e12 if sheet else None,
        "train_mfu_datasheet": 3 * fpi * train_ips / sheet if sheet else None,
        "max_memory_mb": max_memory_mb(device),
        "torch": torch.__version__,
    }


def _cpu_name() -> str:
    """The CPU model for benchmark records, e.g. 'AMD EPYC' (what the machine exposes)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _host(device: torch.device) -> dict:
    """The device's name, for the record."""
    return {"device": f"cpu: {_cpu_name()}" if device.type == "cpu" else torch.cuda.get_device_name(device)}


def bench_compare_timm(args) -> dict:
    try:
        import timm  # optional: only the timm comparison needs timm
    except ImportError:
        raise ConfigError("compare-timm needs timm: pip install timm (or vit_dist[timm])") from None
    device = torch.device(args.device)
    ours = _build(args.model, args.img_size, args.compile or args.compile_ours, device)
    torch.manual_seed(0)
    theirs = timm.create_model(args.model, pretrained=False, img_size=args.img_size).to(device)
    if args.compile:  # the same per-block compile as ours
        # timm's ViT / DeiT hold their blocks in ``blocks``, its Swin in ``layers[i].blocks``.
        apply_compile(
            list(cast(nn.Sequential, theirs.blocks))
            if hasattr(theirs, "blocks")
            else [b for s in cast(nn.Sequential, theirs.layers) for b in cast(nn.Sequential, s.blocks)]
        )
    theirs.load_state_dict(ours.state_dict())  # the same weights in both
    # Each side's own trainer optimizer, unless --same-optimizer compares the models alone.
    timm_opt = "vit_dist" if args.same_optimizer else "timm"
    steps = {
        "ours": make_steps(ours, args.batch_size, args.img_size, device, args.precision, ours.num_classes),
        "timm": make_steps(
            theirs, args.batch_size, args.img_size, device, args.precision, ours.num_classes, timm_opt
        ),
    }
    result = {
        "mode": "compare-timm",
        "model": args.model,
        "batch_size": args.batch_size,
        "img_size": args.img_size,
        "precision": args.precision,
        "compile": args.compile,
        "compile_ours_only": args.compile_ours,
        "optimizers": f"ours: vit_dist, timm: {timm_opt}",
        **_host(device),
        "threads": torch.get_num_threads(),
        "timm": timm.__version__,
        "torch": torch.__version__,
    }
    for kind, idx in (("train", 0), ("infer", 1)):
        for name in steps:  # warm both up before any timing
            _time(steps[name][idx], device, args.warmup, 0)
        times: dict[str, list[float]] = {"ours": [], "timm": []}
        for _ in range(args.steps):  # interleaved: A B A B ... so drift hits both alike
            for name in ("ours", "timm"):
                times[name] += _time(steps[name][idx], device, 0, 1)
        med = {k: statistics.median(v) for k, v in times.items()}
        result[f"{kind}_ours_images_per_sec"] = args.batch_size / med["ours"]
        result[f"{kind}_timm_images_per_sec"] = args.batch_size / med["timm"]
        result[f"{kind}_ratio"] = med["timm"] / med["ours"]  # > 1: we are faster
    return result


def bench_run(run_dir: str, skip: int) -> dict:
    """Summary of a training run's logged windows (``metrics.jsonl``), the first ``skip`` left out.

    Images/s and MFU are medians over windows (MFU as the trainer logs it: against the
    datasheet peak of a known GPU, else a measured one); ``data_wait_frac`` is the mean and the
    max over windows: the share of host step time spent in ``next(batch)``, an upper bound on
    the GPU's idle time for want of data (the host runs ahead of the GPU by a queue of work).
    """

    run = Path(run_dir)
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        info = json.loads((run / "run_info.json").read_text())
        cfg = yaml.safe_load((run / "config.yaml").read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{run} is not a finished training run directory ({e.filename} missing)") from None
    windows = [json.loads(line) for line in lines if line.strip()][skip:]
    if not windows:
        raise DataError(f"{run}/metrics.jsonl has no logged window after the first {skip}")
    wait = [w["data_wait_frac"] for w in windows]
    ips = statistics.median(w["images_per_sec"] for w in windows)  # all ranks together
    return {
        "mode": "run",
        "run_dir": str(run),
        "model": cfg["model"]["name"],
        "device": info["device"],
        "world_size": info["world_size"],
        "strategy": info["strategy"],
        "precision": info["precision"],
        "compile": cfg["parallel"]["compile"],
        "batch_size_per_device": cfg["train"]["batch_size"],
        "loader_workers_per_rank": cfg["data"]["workers"],
        "windows": len(windows),
        "steps": windows[-1]["step"],
        "images_per_sec": ips,
        "images_per_sec_per_device": ips / info["world_size"],
        "mfu": statistics.median(w["mfu"] for w in windows),
        "data_wait_frac_mean": statistics.fmean(wait),
        "data_wait_frac_max": max(wait),
        "max_memory_mb": max(w["max_memory_mb"] for w in windows),
        "skipped_steps": windows[-1]["skipped_steps"],
        "bad_samples": windows[-1]["bad_samples"],
    }


def _print_table(rec: dict) -> None:
    width = max(len(k) for k in rec)
    for k, v in rec.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        data_main(argv[1:])  # prints its tables, writes --out
        return 0
    p = argparse.ArgumentParser(prog="python -m vit_dist.bench", description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["model", "compare-timm", "data", "run"])
    p.add_argument("run_dir", nargs="?", help="run: the training run's output directory")
    p.add_argument("--skip", type=int, default=1, help="run: logging windows to leave out (default 1)")
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--precision", choices=list(DTYPES), default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--compile-ours", action="store_true", help="compare-timm: compile ours, keep timm eager")
    p.add_argument(
        "--same-optimizer",
        action="store_true",
        help="compare-timm: step timm's model with vit_dist's optimizer too (models alone, not trainers)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    try:
        if args.mode == "run":
            if not args.run_dir:
                raise ConfigError("run: give the training run's output directory")
            rec = bench_run(args.run_dir, args.skip)
        else:
            rec = bench_model(args) if args.mode == "model" else bench_compare_timm(args)
    except VitDistError as e:  # a user's mistake (a bad run directory, an unknown model): one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_table(rec)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rec, fh, indent=1)
    return 0


if __name__ == "__main__":
    exit_process(main())
