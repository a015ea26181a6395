"""``python -m vit_dist.data.bench``: decode and loader throughput on real photos.

Measures, on scikit-learn's two bundled real photos (427x640 JPEG; ``--scales 3`` also
upscales them to 1281x1920 as stand-ins for large camera photos):

1. decode: images/s on one thread for RandomResizedCrop (train) and resize + center crop
   (eval) to ``--size``, for each decode backend of ``decode.py`` (PIL draft vs
   ``torchvision.io.decode_jpeg``);
2. loader: images/s delivered to ``--device`` as normalised float batches (pinned and copied
   non-blocking on CUDA), with the default train augmentation (RRC, flip, RandAugment,
   normalise, random erasing), for this package's shard pipeline -- batches normalised in the
   workers, and uint8 batches normalised on the device (the CUDA default) -- against a
   torchvision ``ImageFolder`` + PIL + ``v2`` baseline with the same augmentation, workers
   and batch size, in the same run. The photos are replicated into an ImageFolder of
   ``--classes`` classes (``--images`` files), which is also what the shards are written from;
3. seek (``--modes seek``): the loader's images/s when ``--seek-streams`` loader workers (4)
   share one shard of ``--images`` photos (upscaled ``--seek-scale`` times), each reading its
   quarter: seeking to it with the shard's byte-offset index (``index.py``) against streaming
   through the shard from its start (the same shard without its index), with the bytes each
   epoch reads (``plan.simulate``'s cost model), the time until every stream delivered its
   first batch, and samples/s of reading alone (the tar reader, no decoding, one process).

Prints a table and writes JSON with ``--out``. It asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from ..core.config import AugmentSection, DataSection
from .decode import decode_random_resized_crop, decode_resize_center_crop
from .index import load_offsets
from .meta import read_meta, write_meta
from .pipeline import DataConfig, ShardLoader
from .plan import all_stream_plans
from .plan.simulate import exact_figures, split_from_meta
from .tar_reader import read_runs
from .writers import write_shards


def _photos(scale: int) -> list[bytes]:
    from sklearn.datasets import load_sample_images  # slow to import; only the photo benchmark needs it

    out = []
    for array in load_sample_images().images:
        im = Image.fromarray(array)
        if scale != 1:
            im = im.resize((im.width * scale, im.height * scale), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def photo_folder(root: str | Path, images: int, classes: int, scale: int = 1) -> Path:
    """An ImageFolder tree of ``images`` JPEG files (the bundled photos, 427x640 times ``scale``,
    replicated) in ``classes`` class folders: real-photo decode cost for throughput runs, not for
    accuracy."""
    root, photos = Path(root), _photos(scale)
    for i in range(images):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.jpg").write_bytes(photos[i % len(photos)])
    return root


def _rate(fn, items: list, seconds: float) -> float:
    """Calls per second of ``fn`` cycling over ``items`` for about ``seconds``."""
    fn(items[0])  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        fn(items[n % len(items)])
        n += 1
    return n / (time.perf_counter() - t0)


def bench_decode(size: int, scales: list[int], seconds: float) -> list[dict]:
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-worker numbers: a loader worker runs one thread
    try:
        for scale in scales:
            photos = _photos(scale)
            shape = Image.open(io.BytesIO(photos[0])).size
            for op, fn in (
                ("train RRC", decode_random_resized_crop),
                ("eval crop", decode_resize_center_crop),
            ):
                for backend in ("pil", "tv", "auto"):
                    rate = _rate(lambda d, fn=fn, b=backend: fn(d, size, backend=b), photos, seconds)
                    rows.append(
                        {"photo": f"{shape[1]}x{shape[0]}", "op": op, "backend": backend, "img_per_s": rate}
                    )
    finally:
        torch.set_num_threads(threads)
    return rows


def _loader_rate(batches, to_device, device: torch.device, seconds: float) -> float:
    """Images/s of ``to_device(batch)`` (normalised floats on ``device``) after the first batch
    (worker start-up excluded), over at least ``seconds``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    it = iter(batches())
    to_device(next(it))
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        for b in it:
            n += len(to_device(b))
            if time.perf_counter() - t0 >= seconds:
                sync()
                return n / (time.perf_counter() - t0)
        it = iter(batches())  # next epoch


def bench_loaders(
    size: int, images: int, classes: int, workers: int, batch_size: int, seconds: float, device: str = "cpu"
) -> list[dict]:
    aug = AugmentSection()
    with tempfile.TemporaryDirectory() as tmp:
        root = photo_folder(Path(tmp) / "folder", images, classes)
        shards = write_shards(
            str(root),
            Path(tmp) / "shards",
            shard_samples=max(1, images // (4 * max(1, workers))),
            progress=False,
        )
        dev = torch.device(device)
        pin = dev.type == "cuda"
        rates = {}
        for name, in_workers in (("vit_dist shards", True), ("vit_dist uint8", False)):
            on: Literal["worker", "device"] = "worker" if in_workers else "device"
            data = DataSection(img_size=size, workers=workers, shuffle_buffer=64, normalize_on=on)
            cfg = DataConfig(str(shards), data=data, augment=aug, batch_size=batch_size, device=dev.type)
            loader = ShardLoader(cfg)
            rates[name] = _loader_rate(
                lambda ld=loader: ld, lambda b, ld=loader: ld.images(b, dev), dev, seconds
            )

        baseline_tf = v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandAugment(num_ops=aug.randaugment_ops, magnitude=aug.randaugment_magnitude),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(DataSection().mean, DataSection().std),
                v2.RandomErasing(p=aug.random_erasing, value=0),
            ]
        )
        folder = ImageFolder(str(root), transform=baseline_tf)
        dl = torch.utils.data.DataLoader(
            folder, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, pin_memory=pin
        )
        rates["ImageFolder+PIL"] = _loader_rate(
            lambda: dl, lambda b: b[0].to(dev, non_blocking=True), dev, seconds
        )
    per = max(1, workers)
    return [
        {"loader": k, "workers": workers, "device": str(dev), "img_per_s": v, "img_per_s_per_worker": v / per}
        for k, v in rates.items()
    ]


def _without_index(shards: Path, out: Path) -> Path:
    """A copy of the shard directory ``shards`` without its byte-offset indexes (files and
    ``dataset.json`` entries): what a data set written by another tool looks like."""
    shutil.copytree(shards, out, ignore=shutil.ignore_patterns("*.idx"))
    meta = read_meta(out)
    for split in meta["splits"].values():
        for shard in split["shards"]:
            shard.pop("index", None)
    meta.pop("format")
    write_meta(out, meta)
    return out


def _first_round(loader: ShardLoader, to_device, streams: int) -> float:
    """Seconds from starting an epoch until every stream delivered its first batch (the
    ``DataLoader`` takes one batch per worker in turn): with streaming through, the last stream
    first reads through the samples before its slice."""
    t0 = time.perf_counter()
    it = iter(loader)
    for _ in range(streams):
        to_device(next(it))
    seconds = time.perf_counter() - t0
    del it  # ends the workers
    return seconds


def _read_rate(loader: ShardLoader, streams: int, seconds: float) -> float:
    """Samples/s of reading (no decoding) every stream's slices of an epoch, one stream after
    the other in this process, the way the streams read them (seeking where the shard has a
    usable index), over whole epochs for at least ``seconds``."""
    shards, c = loader.shards, loader.cfg
    sizes = shards.counted_sizes()  # written here with their dataset.json: counted
    plans = all_stream_plans(
        sizes,
        seed=c.seed,
        epoch=0,
        world_size=1,
        num_workers=streams,
        batch_size=c.batch_size,
        shuffle=True,
    )
    indexes = shards.indexes or [None] * len(shards.urls)
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < seconds:
        for plan in plans:
            for shard, group in itertools.groupby(plan.slices, key=lambda s: s.shard):
                url, size = shards.urls[shard], sizes[shard]
                offsets = load_offsets(indexes[shard], url, size)
                n += sum(
                    1 for _ in read_runs(url, [(s.start, s.stop) for s in group], count=size, offsets=offsets)
                )
    return n / (time.perf_counter() - t0)


def bench_seek(
    size: int,
    images: int,
    batch_size: int,
    seconds: float,
    device: str = "cpu",
    streams: int = 4,
    scale: int = 1,
) -> list[dict]:
    """``streams`` loader workers reading one shard of ``images`` photos, each its own slice:
    seeking with the shard's index against streaming through it (see the module docstring)."""
    aug = AugmentSection()
    dev = torch.device(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = photo_folder(Path(tmp) / "folder", images, 4, scale)
        indexed = write_shards(str(root), Path(tmp) / "indexed", shard_samples=images, progress=False)
        plain = _without_index(indexed, Path(tmp) / "plain")
        runs: dict[str, tuple] = {}  # name -> (loader, to_device, split, figures, firsts, rates, reads)
        for name, directory in (("index (seek)", indexed), ("no index (stream through)", plain)):
            data = DataSection(img_size=size, workers=streams, shuffle_buffer=64, normalize_on="device")
            cfg = DataConfig(str(directory), data=data, augment=aug, batch_size=batch_size, device=dev.type)
            loader = ShardLoader(cfg)
            split = split_from_meta(directory, "train")
            fig = exact_figures(split, world_size=1, num_workers=streams, batch_size=batch_size, shuffle=True)
            to_device = lambda b, ld=loader: ld.images(b, dev)
            _first_round(loader, to_device, streams)  # warm-up: the first start of workers pays for imports
            runs[name] = (loader, to_device, split, fig, [], [], [])
        # Interleaved (A B B A), so that a machine busy with other work slows both alike.
        for name in [*runs, *reversed(runs)]:
            loader, to_device, _, _, firsts, rates, reads = runs[name]
            firsts.append(_first_round(loader, to_device, streams))
            rates.append(_loader_rate(lambda ld=loader: ld, to_device, dev, seconds / 2))
            reads.append(_read_rate(loader, streams, seconds / 4))
        for name, (_, _, split, fig, firsts, rates, reads) in runs.items():
            rows.append(
                {
                    "reading": name,
                    "streams": streams,
                    "shards": len(split.sizes),
                    "photo": f"{427 * scale}x{640 * scale}",
                    "shard_mb": split.total() / 1e6,
                    "mb_read_per_epoch": fig.bytes_read / 1e6,
                    "read_amplification": fig.read_amplification,
                    "first_round_s": min(firsts),
                    "img_per_s": sum(rates) / len(rates),
                    "img_per_s_runs": rates,
                    "read_only_samples_per_s": sum(reads) / len(reads),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m vit_dist.data.bench", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=224, help="output side (default 224)")
    p.add_argument("--scales", default="1,3", help="photo upscales for the decode table (default 1,3)")
    p.add_argument("--images", type=int, default=256, help="files in the benchmark ImageFolder")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="loader workers (0: main process)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    p.add_argument("--device", help="where batches are delivered (default: cuda if available, else cpu)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument(
        "--modes",
        default="decode,loader",
        help="comma-separated: decode, loader, seek (default decode,loader)",
    )
    p.add_argument("--seek-streams", type=int, default=4, help="seek mode: loader workers sharing the shard")
    p.add_argument("--seek-scale", type=int, default=1, help="seek mode: photo upscale (3: 1281x1920)")
    a = p.parse_args(argv)
    modes = {m for m in a.modes.split(",") if m}
    if not modes or modes - {"decode", "loader", "seek"}:
        p.error(f"--modes takes decode, loader and/or seek, got {a.modes!r}")
    scales = [int(s) for s in a.scales.split(",") if s]
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result: dict = {"mode": "data", "size": a.size}
    if "decode" in modes:
        result["decode"] = decode = bench_decode(a.size, scales, a.seconds)
        print(f"decode + crop to {a.size}, one thread (images/s)")
        print(f"{'photo':>10} {'op':>10} {'backend':>8} {'img/s':>9}")
        for r in decode:
            print(f"{r['photo']:>10} {r['op']:>10} {r['backend']:>8} {r['img_per_s']:9.1f}")
    if "loader" in modes:
        result["loaders"] = loaders = bench_loaders(
            a.size, a.images, a.classes, a.workers, a.batch_size, a.seconds, device
        )
        print(
            f"\nloader: decode + train augmentation at {a.size}, batch {a.batch_size}, normalised on {device}"
        )
        print(f"{'loader':>16} {'workers':>8} {'img/s':>9} {'img/s/worker':>13}")
        for r in loaders:
            print(
                f"{r['loader']:>16} {r['workers']:>8} {r['img_per_s']:9.1f} {r['img_per_s_per_worker']:13.1f}"
            )
    if "seek" in modes:
        result["seek"] = seek = bench_seek(
            a.size, a.images, a.batch_size, a.seconds, device, a.seek_streams, a.seek_scale
        )
        print(
            f"\nseek: {a.seek_streams} loader workers sharing one shard of {a.images} photos "
            f"({seek[0]['photo']}, {seek[0]['shard_mb']:.1f} MB), train augmentation at {a.size}, batch {a.batch_size}"
        )
        print(
            f"{'reading':>26} {'MB/epoch':>9} {'read amp':>9} {'1st round s':>12} {'img/s':>9} {'read-only/s':>12}"
        )
        for r in seek:
            print(
                f"{r['reading']:>26} {r['mb_read_per_epoch']:9.1f} {r['read_amplification']:9.3f} "
                f"{r['first_round_s']:12.3f} {r['img_per_s']:9.1f} {r['read_only_samples_per_s']:12.1f}"
            )
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
