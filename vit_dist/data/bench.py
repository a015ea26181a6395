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
   ``--classes`` classes (``--images`` files), which is also what the shards are written from.

Prints a table and writes JSON with ``--out``. It asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from .decode import decode_random_resized_crop, decode_resize_center_crop
from .pipeline import DataConfig, ShardLoader
from .transforms import AugmentConfig
from .writers import write_shards


def _photos(scale: int) -> list[bytes]:
    from sklearn.datasets import load_sample_images  # slow to import; only the photo benchmark needs it

    out = []
    for array in load_sample_images().images:
        im = Image.fromarray(array)
        if scale != 1:
            im = im.resize((im.width * scale, im.height * scale), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def photo_folder(root: str | Path, images: int, classes: int) -> Path:
    """An ImageFolder tree of ``images`` JPEG files (the bundled photos, 427x640, replicated)
    in ``classes`` class folders: real-photo decode cost for throughput runs, not for accuracy."""
    root, photos = Path(root), _photos(1)
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
    aug = AugmentConfig(img_size=size)
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
            cfg = DataConfig(
                str(shards),
                batch_size=batch_size,
                workers=workers,
                augment=aug,
                shuffle_buffer=64,
                pin_memory=pin,
                normalize_in_workers=in_workers,
            )
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
                v2.Normalize(list(aug.mean), list(aug.std)),
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
    a = p.parse_args(argv)
    scales = [int(s) for s in a.scales.split(",") if s]
    decode = bench_decode(a.size, scales, a.seconds)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaders = bench_loaders(a.size, a.images, a.classes, a.workers, a.batch_size, a.seconds, device)
    print(f"decode + crop to {a.size}, one thread (images/s)")
    print(f"{'photo':>10} {'op':>10} {'backend':>8} {'img/s':>9}")
    for r in decode:
        print(f"{r['photo']:>10} {r['op']:>10} {r['backend']:>8} {r['img_per_s']:9.1f}")
    print(f"\nloader: decode + train augmentation at {a.size}, batch {a.batch_size}, normalised on {device}")
    print(f"{'loader':>16} {'workers':>8} {'img/s':>9} {'img/s/worker':>13}")
    for r in loaders:
        print(f"{r['loader']:>16} {r['workers']:>8} {r['img_per_s']:9.1f} {r['img_per_s_per_worker']:13.1f}")
    result = {"mode": "data", "size": a.size, "decode": decode, "loaders": loaders}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
