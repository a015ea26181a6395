"""Shard writers (the library behind ``python -m vit_dist.data.shards``): ImageFolder trees and the
bundled digits -> WebDataset tar shards plus ``dataset.json``.

* a folder (``--from-folder DIR``): an ImageFolder tree ``class_name/*.jpg|png|webp|...``, or one with
  ``train/`` and ``val/`` (and ``test/``) subtrees sharing the class names of ``train/``.
* ``digits`` (``--from digits``): scikit-learn's bundled real 8x8 handwritten digits, split 80/20 with a
  fixed seed (stratified), upscaled to ``--img-size`` and stored as JPEG images: the embedded
  data set of the demo and the tests.

Each sample is ``{__key__, .jpg, .cls}``. A JPEG source is stored byte for byte unless
``--resize`` asks for a smaller shorter side (pre-resized shards are what fast ImageNet
training reads); any other format is re-encoded as JPEG. Samples are shuffled with a fixed seed
before sharding, since the training pipeline only shuffles shards and within a buffer: a shard
per class would make every batch one class. Shards close at ``--shard-samples`` samples
and/or ``--shard-bytes`` bytes. Encoding runs in ``--workers`` processes (order preserved);
the main process writes the tars. ``dataset.json`` (classes, samples per split and per shard)
is written last.

Atomicity: each shard is written to a hidden temp name and renamed when complete, and the
index only appears after the last shard, so a killed writer leaves only complete shards and no
``dataset.json`` (and its temp files are removed by the next run). Existing shards or an
index in ``--out`` are an error unless ``--overwrite``.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import random
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from .meta import META_NAME, read_meta, write_meta

log = logging.getLogger("vit_dist.data")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff", ".gif"}
SPLIT_DIRS = ("train", "val", "test")
_JPEG_MAGIC = b"\xff\xd8\xff"


# ---------------------------------------------------------------- encoding (runs in workers)


def _encode(job: tuple) -> tuple[bytes | None, str]:
    """(kind, payload, resize, quality) -> (jpeg bytes or None, error). Never raises."""
    kind, payload, resize, quality = job
    try:
        if kind == "digit":  # payload: (8, 8) float array in [0, 16], resize: output side
            im = Image.fromarray((payload * (255 / 16)).astype(np.uint8)).resize(
                (resize, resize), Image.BICUBIC
            )
            return _jpeg(im.convert("RGB"), quality), ""
        data = Path(payload).read_bytes()
        im = Image.open(io.BytesIO(data))
        small = resize is None or min(im.size) <= resize
        if data[:3] == _JPEG_MAGIC and small:
            im.verify()  # header + structure check; the bytes are kept as they are
            return data, ""
        if not small:
            scale = resize / min(im.size)
            out = (max(resize, round(im.size[0] * scale)), max(resize, round(im.size[1] * scale)))
            im.draft("RGB", out)  # JPEG: decode at reduced scale when possible
            im = im.convert("RGB").resize(out, Image.BICUBIC, reducing_gap=3.0)
        return _jpeg(im.convert("RGB"), quality), ""
    except Exception as e:  # unreadable source image: skipped and counted by the writer
        return None, f"{payload if kind != 'digit' else 'digit'}: {type(e).__name__}: {e}"


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ---------------------------------------------------------------- tar writing (main process)


class _ShardSink:
    """Writes ``{split}-{i:06d}.tar`` shards atomically, rolling over by count and/or bytes."""

    def __init__(self, out: Path, split: str, max_samples: int | None, max_bytes: int | None):
        self.out, self.split, self.max_samples, self.max_bytes = out, split, max_samples, max_bytes
        self.shards: list[dict] = []
        self._tar = self._tmp = None
        self._count = self._bytes = 0

    def add(self, key: str, image: bytes, label: int) -> None:
        size = len(image) + 1536  # payload + two 512-byte headers + padding, roughly
        if self._tar is not None and (
            (self.max_samples and self._count >= self.max_samples)
            or (self.max_bytes and self._bytes + size > self.max_bytes)
        ):
            self._close()
        if self._tar is None:
            self._open()
        for name, data in ((f"{key}.jpg", image), (f"{key}.cls", str(label).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: reproducible bytes
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):06d}.tar"
        self._name = name
        self._tmp = self.out / f".{name}.tmp-{os.getpid()}"
        # Stays open across add() calls until the shard is full; _close() closes and renames it.
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._count = self._bytes = 0

    def _close(self) -> None:
        self._tar.close()
        final = self.out / self._name
        os.replace(self._tmp, final)  # atomic: a shard with its final name is complete
        self.shards.append(
            {"name": self._name, "num_samples": self._count, "num_bytes": final.stat().st_size}
        )
        self._tar = None

    def finish(self) -> list[dict]:
        if self._tar is not None:
            self._close()
        return self.shards


# ---------------------------------------------------------------- sources


def _scan_folder(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """-> (class names, {split: [(path, label)]}) for an ImageFolder tree."""
    if not root.is_dir():
        raise DataError(f"--from-folder {root} is not a directory")
    split_roots = {s: root / s for s in SPLIT_DIRS if (root / s).is_dir()}
    if "train" not in split_roots:
        split_roots = {"train": root}
    classes = sorted(d.name for d in split_roots["train"].iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{split_roots['train']} has no class sub-directories (expected class_name/*.jpg)")
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, sroot in split_roots.items():
        items = []
        for d in sorted(p for p in sroot.iterdir() if p.is_dir()):
            if d.name not in index:
                raise DataError(f"class {d.name!r} of {sroot} is not a class of {split_roots['train']}")
            items += [
                (str(f), index[d.name]) for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES
            ]
        if not items:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {sroot}")
        splits[split] = items
    return classes, splits


def _digits(seed: int) -> tuple[list[str], dict[str, list[tuple[np.ndarray, int]]]]:
    # Deferred: scikit-learn takes seconds to import and only this source needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train, val = train_test_split(idx, test_size=0.2, random_state=seed, stratify=digits.target)
    splits = {
        s: [(digits.images[i], int(digits.target[i])) for i in ids]
        for s, ids in (("train", train), ("val", val))
    }
    return [str(c) for c in range(10)], splits


# ---------------------------------------------------------------- driver


def _prepare_out(out: Path, *, overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(".*.tmp-*"):  # leftovers of a killed writer: never complete
        tmp.unlink()
    existing = sorted(out.glob("*.tar")) + sorted(out.glob(META_NAME))
    if existing and not overwrite:
        raise DataError(
            f"{out} already holds shards ({existing[0].name}, ...): pass --overwrite to replace them"
        )
    for f in existing:
        f.unlink()


def write_shards(
    source: str,
    out: str | os.PathLike,
    *,
    img_size: int = 32,
    resize: int | None = None,
    shard_samples: int | None = 1000,
    shard_bytes: int | None = None,
    quality: int = 90,
    workers: int = 0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write shards + ``dataset.json`` from ``source`` ("digits" or an ImageFolder path) into ``out``.

    ``img_size`` applies to digits only; ``resize`` (shorter side) to folders. Returns ``out``.
    """
    out = Path(out)
    if not shard_samples and not shard_bytes:
        raise DataError("set shard_samples and/or shard_bytes (how big a shard may get)")
    if source == "digits":
        classes, splits = _digits(seed)
        jobs_of = lambda items: [("digit", a, img_size, quality) for a, _ in items]
    else:
        classes, splits = _scan_folder(Path(source))
        jobs_of = lambda items: [("file", p, resize, quality) for p, _ in items]
    _prepare_out(out, overwrite=overwrite)
    meta = {"source": source, "classes": classes, "image_size": img_size if source == "digits" else resize}
    meta["splits"] = {}
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for split, items in splits.items():
            random.Random(f"{seed}/{split}").shuffle(items)
            sink = _ShardSink(out, split, shard_samples, shard_bytes)
            jobs = jobs_of(items)
            encoded = pool.imap(_encode, jobs, chunksize=16) if pool else map(_encode, jobs)
            skipped = 0
            bar = tqdm(total=len(items), desc=f"{split} shards", unit="img", disable=not progress)
            for i, ((data, err), (_, label)) in enumerate(zip(encoded, items)):
                bar.update()
                if data is None:
                    skipped += 1
                    log.warning("skipping unreadable image %s", err)
                    continue
                sink.add(f"{split}_{i:08d}", data, label)
            bar.close()
            shards = sink.finish()
            meta["splits"][split] = {
                "num_samples": sum(s["num_samples"] for s in shards),
                "skipped": skipped,
                "shards": shards,
            }
    finally:
        if pool is not None:
            pool.terminate()
    write_meta(out, meta)  # last: its presence means every shard above is complete
    return out


def ensure_digits_shards(out_dir: str | os.PathLike, img_size: int = 32, shard_samples: int = 16) -> Path:
    """The digits shards in ``out_dir``, written if missing (safe when several ranks call it at once).

    16 samples per shard gives 90 train and 23 val shards: enough streams for exact epochs on
    e.g. 2 nodes x 2 ranks x 4 loader workers.
    """
    out = Path(out_dir)
    if (out / META_NAME).is_file():
        meta = read_meta(out)
        if meta.get("source") == "digits" and meta.get("image_size") == img_size:
            return out
        raise DataError(
            f"{out} holds other shards (source {meta.get('source')}, size {meta.get('image_size')})"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_shards("digits", tmp, img_size=img_size, shard_samples=shard_samples, progress=False)
        try:
            os.rename(tmp, out)  # atomic; fails if another process (or an empty dir) got there first
        except OSError:
            if not (out / META_NAME).is_file():
                if out.is_dir() and not any(out.iterdir()):
                    out.rmdir()
                    os.rename(tmp, out)
                    return out
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ensure_digits_shards(out, img_size, shard_samples)
