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
the main process writes the tars, each with its byte-offset index ``<shard>.idx`` beside it
(``index.py``: lets a stream seek to the first sample of its slice). ``dataset.json`` (classes,
samples per split and per shard, each shard's index) is written last.

Atomicity: the shards are written into a hidden staging directory inside ``--out`` (same file
system) and published at the end; ``dataset.json`` is the one switch between data sets, so a
writer killed at any moment leaves ``--out`` with a complete data set: the old one (its index and
every shard it lists) or the new one (see :func:`_publish`). What a killed writer leaves behind
(the staging directory, temp files) is removed by the next run.

Existing shards or an index in ``--out`` are an error unless ``--overwrite``, which removes only
the shards the old ``dataset.json`` lists, and only names that are plain files inside ``--out``
(``meta.index_name_problem``), with their indexes (listed, or the sidecar ``<shard>.idx``):
other files there (``backup.tar``) are never touched, and a file
at a name the new shards would take that the old index does not list is an error, not replaced.
"""

from __future__ import annotations

import array
import io
import logging
import multiprocessing
import os
import random
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core.atomic import fsync_dir
from ..core.errors import DataError
from ..core.files import read_bytes
from .decode import check_image_size, to_rgb8
from .index import INDEX_SUFFIX, build_index, read_index, write_index
from .meta import META_NAME, escape_problem, index_name_problem, read_meta, shard_file, write_meta

log = logging.getLogger("vit_dist.data")

# The staging directory of one run, inside --out; a hidden name no user file is expected to have.
STAGING_PREFIX = ".vit_dist-staging-"
# The temp names of an unfinished shard (_ShardSink) or index (atomic.atomic_path).
_TEMP_FILE = re.compile(r"\.(?:\w+-\d{6}\.tar(?:\.idx)?|dataset\.json)\.tmp-\d+")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff", ".gif"}
SPLIT_DIRS = ("train", "val", "test")
_JPEG_MAGIC = b"\xff\xd8\xff"


# ---------------------------------------------------------------- encoding (runs in workers)


SOURCE_IMAGE_LIMIT = 256 * 2**20  # bytes of one source image (a 100-megapixel TIFF fits)


def _encode(job: tuple) -> tuple[bytes | None, str]:
    """(kind, payload, resize, quality) -> (jpeg bytes or None, error). Never raises."""
    kind, payload, resize, quality = job
    try:
        if kind == "digit":  # payload: (8, 8) float array in [0, 16], resize: output side
            im = Image.fromarray((payload * (255 / 16)).astype(np.uint8)).resize(
                (resize, resize), Image.Resampling.BICUBIC
            )
            return _jpeg(im.convert("RGB"), quality), ""
        # A regular file of bounded size: a FIFO in the folder would block the writer forever.
        data = read_bytes(payload, limit=SOURCE_IMAGE_LIMIT, error=DataError, what="image")
        check_image_size(data)  # the pixel limit training applies, checked before decoding
        im = Image.open(io.BytesIO(data))
        small = resize is None or min(im.size) <= resize
        if data[:3] == _JPEG_MAGIC and small:
            im.verify()  # header + structure check; the bytes are kept as they are
            return data, ""
        if not small:
            scale = resize / min(im.size)
            out = (max(resize, round(im.size[0] * scale)), max(resize, round(im.size[1] * scale)))
            im.draft("RGB", out)  # JPEG: decode at reduced scale when possible
            im = to_rgb8(im).resize(out, Image.Resampling.BICUBIC, reducing_gap=3.0)
        return _jpeg(to_rgb8(im), quality), ""
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
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = self._bytes = 0
        self._offsets: list[int] = []  # where each sample's first header starts (index.py)

    def add(self, key: str, image: bytes, label: int) -> None:
        size = len(image) + 1536  # payload + two 512-byte headers + padding, roughly
        if self._tar is not None and (
            (self.max_samples and self._count >= self.max_samples)
            or (self.max_bytes and self._bytes + size > self.max_bytes)
        ):
            self._close()
        tar = self._tar if self._tar is not None else self._open()
        self._offsets.append(tar.offset)
        for name, data in ((f"{key}.jpg", image), (f"{key}.cls", str(label).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: reproducible bytes
            tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size

    def _open(self) -> tarfile.TarFile:
        name = f"{self.split}-{len(self.shards):06d}.tar"
        self._name = name
        self._tmp = self.out / f".{name}.tmp-{os.getpid()}"
        # Stays open across add() calls until the shard is full; _close() closes and renames it.
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._count = self._bytes = 0
        self._offsets = []
        return self._tar

    def _close(self) -> None:
        tar, tmp = self._tar, self._tmp
        if tar is None or tmp is None:  # never: callers close an open shard only
            raise RuntimeError("no shard is open")
        end = tar.offset  # the last sample's data ends here; end-of-archive blocks follow
        tar.close()
        with open(tmp, "rb") as fh:  # on disk before the index that will list it
            os.fsync(fh.fileno())
        final = self.out / self._name
        os.replace(tmp, final)  # atomic: a shard with its final name is complete
        size = final.stat().st_size
        index = f"{self._name}{INDEX_SUFFIX}"
        write_index(self.out / index, [*self._offsets, end], size)  # atomic too
        self.shards.append(
            {"name": self._name, "num_samples": self._count, "num_bytes": size, "index": index}
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


def _check_sizes(
    *, img_size: int, resize: int | None, shard_samples: int | None, shard_bytes: int | None, workers: int
) -> None:
    """Refuse sizes that would write nothing useful (a 0 px image, a shard that can hold nothing)."""
    if not shard_samples and not shard_bytes:
        raise DataError("set shard_samples and/or shard_bytes (how big a shard may get)")
    for name, value in (
        ("img_size", img_size),
        ("resize", resize),
        ("shard_samples", shard_samples),
        ("shard_bytes", shard_bytes),
    ):
        if value is not None and value <= 0:
            raise DataError(f"{name} must be positive, got {value}")
    if workers < 0:
        raise DataError(f"workers must be 0 (encode in this process) or more, got {workers}")


def _listed_shards(out: Path) -> set[str]:
    """The files of ``out``'s current data set: the shards its ``dataset.json`` lists, the only
    files an overwrite removes.

    A listed name that is not a plain file inside ``out`` (``meta.index_name_problem``) or that
    names the index itself is left alone, with a warning. An index written mid-publish (see
    :func:`_publish`) lists its shards inside the staging directory; each also claims its final
    name, which that publish may already have given it, and the index's ``replaces`` names the
    files of the data set before it that the publish had still to remove.
    """
    if not (out / META_NAME).is_file():
        return set()
    try:
        meta = read_meta(out)
    except DataError as e:
        log.warning("%s; no shard of it is removed", e)
        return set()
    splits = meta["splits"] if isinstance(meta["splits"], dict) else {}
    entries = [
        shard
        for split in splits.values()
        for shard in (split.get("shards") or [] if isinstance(split, dict) else [])
    ]
    listed = [shard.get("name") if isinstance(shard, dict) else shard for shard in entries]
    # A shard's index goes with it: the one listed, and a sidecar <shard>.idx that another tool
    # (or python -m vit_dist.data.shards --index) put there.
    listed += [shard["index"] for shard in entries if isinstance(shard, dict) and "index" in shard]
    listed += [f"{n}{INDEX_SUFFIX}" for n in listed[:] if isinstance(n, str) and not n.endswith(INDEX_SUFFIX)]
    listed += [n.split("/", 1)[1] for n in listed if isinstance(n, str) and n.startswith(STAGING_PREFIX)]
    listed += meta["replaces"] if isinstance(meta.get("replaces"), list) else []
    names: set[str] = set()
    for name in listed:
        problem = "the index itself" if name == META_NAME else index_name_problem(out, name)
        if problem is not None or not isinstance(name, str):  # no problem: a str
            log.warning("not removing %r listed in %s: %s", name, out / META_NAME, problem)
        else:
            names.add(name)
    return names


def _remove_listed(out: Path, names: set[str]) -> None:
    """Remove the old data set's files (``_listed_shards``); a symlink goes, never its target."""
    for name in sorted(names):
        path = out / name
        if index_name_problem(out, name) is None and (path.is_symlink() or path.is_file()):
            path.unlink()


def _remove_leftovers(out: Path, *, keep: set[str]) -> None:
    """Remove what killed writers left in ``out``: temp files of unfinished shards and indexes,
    and staging directories except those holding a shard in ``keep`` (a live index lists it)."""
    for entry in out.iterdir():
        if entry.is_symlink():
            continue
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
            if not any(name.startswith(f"{entry.name}/") for name in keep):
                shutil.rmtree(entry)
        elif _TEMP_FILE.fullmatch(entry.name) and entry.is_file():
            entry.unlink()


def _prepare_out(out: Path, splits: list[str], *, overwrite: bool) -> set[str]:
    """Check that ``out`` may take the new shards and clear killed writers' leftovers; -> the
    old data set's files (``_listed_shards``), removed once the new data set is published."""
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in out.glob("*.tar")) + sorted(p.name for p in out.glob(META_NAME))
    existing += sorted(p.name for p in out.glob(f"*.tar{INDEX_SUFFIX}"))
    if existing and not overwrite:
        raise DataError(
            f"{out} already holds shards ({existing[0]}, ...): pass --overwrite to replace the data set "
            f"there (it removes only the shards a {META_NAME} there lists)"
        )
    old = _listed_shards(out)
    _remove_leftovers(out, keep=old)
    ours = re.compile("(?:" + "|".join(map(re.escape, splits)) + r")-\d{6}\.tar(?:\.idx)?")
    clash = [name for name in existing if ours.fullmatch(name) and name not in old]
    if clash:
        raise DataError(
            f"{out / clash[0]} is not listed by a {META_NAME} there but new shards may take its name: "
            f"move it away or choose another --out (--overwrite only replaces listed shards)"
        )
    return old


def _write_split(
    items: list, jobs: list, sink: _ShardSink, pool, *, progress: bool
) -> tuple[list[dict], int]:
    """Encode ``jobs`` (in ``pool`` when there is one) into ``sink``; -> (its shards, skipped images)."""
    encoded = pool.imap(_encode, jobs, chunksize=16) if pool else map(_encode, jobs)
    skipped = 0
    bar = tqdm(total=len(items), desc=f"{sink.split} shards", unit="img", disable=not progress)
    for i, ((data, err), (_, label)) in enumerate(zip(encoded, items)):
        bar.update()
        if data is None:
            skipped += 1
            log.warning("skipping unreadable image %s", err)
            continue
        sink.add(f"{sink.split}_{i:08d}", data, label)
    bar.close()
    return sink.finish(), skipped


def _staged_index(meta: dict, staging: str) -> dict:
    """``meta`` with every shard name (and its byte-offset index) moved into the directory ``staging``."""

    def staged(shard: dict) -> dict:
        moved = {k: f"{staging}/{shard[k]}" for k in ("name", "index") if k in shard}
        return {**shard, **moved}

    splits = {
        split: {**s, "shards": [staged(shard) for shard in s["shards"]]}
        for split, s in meta["splits"].items()
    }
    return {**meta, "splits": splits}


def _give_final_name(staged: Path, final: Path) -> None:
    """``final`` becomes a second name of the complete shard ``staged``: a hard link, or a copy on
    file systems without them. Never replaces a file (``_prepare_out`` made sure the name is free)."""
    try:
        os.link(staged, final)
    except FileExistsError:
        raise DataError(f"{final} appeared while the shards were being written: move it away") from None
    except OSError:  # no hard links on this file system (some network or FUSE mounts): copy
        with open(staged, "rb") as src, open(final, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())


def _publish(out: Path, staging: Path, meta: dict, old: set[str]) -> None:
    """Swap the data set written in ``staging`` in for the old one (``old``: its files).

    Every step leaves ``out`` with a complete data set, so a writer killed at any moment leaves
    one (the old until step 1 ends, the new from then on):

    1. the index lists the new shards where they are, inside ``staging``: the switch (its
       ``replaces`` names the old data set's files, so a run after a kill still removes them);
    2. the old data set's files are removed;
    3. each new shard, and its byte-offset index, gets its final name too (a link: the index
       still lists the staged files);
    4. the index lists the final names; the staging directory goes.
    """
    write_meta(out, {**_staged_index(meta, staging.name), "replaces": sorted(old)})
    _remove_listed(out, old)
    names = [
        shard[k]
        for s in meta["splits"].values()
        for shard in s["shards"]
        for k in ("name", "index")
        if k in shard
    ]
    for name in names:
        _give_final_name(staging / name, out / name)
    fsync_dir(out)
    write_meta(out, meta)
    _remove_leftovers(out, keep=set(names))


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
    _check_sizes(
        img_size=img_size,
        resize=resize,
        shard_samples=shard_samples,
        shard_bytes=shard_bytes,
        workers=workers,
    )
    splits: dict[str, list[tuple[Any, int]]]  # {split: [(digit array or image path, label)]}
    jobs_of: Callable[[list], list[tuple]]
    if source == "digits":
        classes, splits = _digits(seed)
        jobs_of = lambda items: [("digit", a, img_size, quality) for a, _ in items]
    else:
        classes, splits = _scan_folder(Path(source))
        jobs_of = lambda items: [("file", p, resize, quality) for p, _ in items]
    old = _prepare_out(out, list(splits), overwrite=overwrite)
    meta: dict[str, Any] = {
        "source": source,
        "classes": classes,
        "image_size": img_size if source == "digits" else resize,
    }
    meta["splits"] = {}
    staging = out / f"{STAGING_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
    staging.mkdir()  # honours the umask (mkdtemp's is 0700): readers go through it mid-publish
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for split, items in splits.items():
            random.Random(f"{seed}/{split}").shuffle(items)
            sink = _ShardSink(staging, split, shard_samples, shard_bytes)
            shards, skipped = _write_split(items, jobs_of(items), sink, pool, progress=progress)
            meta["splits"][split] = {
                "num_samples": sum(s["num_samples"] for s in shards),
                "skipped": skipped,
                "shards": shards,
            }
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # no index lists it yet; the old data set stays
        raise
    finally:
        if pool is not None:
            pool.terminate()
    _publish(out, staging, meta, old)
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


# ---------------------------------------------------------------- indexing shards of other tools

_SPLIT_WORD = re.compile(r"(?<![a-z])(train|val|validation|test)(?![a-z])")


def _split_of(name: str) -> str:
    """The split a shard named ``name`` belongs to: the first of train/val(idation)/test that is
    a word of its name (``imagenet-val-000001.tar``), else train."""
    found = _SPLIT_WORD.search(name.lower())
    return {"validation": "val"}.get(found.group(1), found.group(1)) if found else "train"


def _write_index_if_changed(shard: str, index: Path, offsets=None) -> int:
    """Write ``shard``'s index (``offsets``, built when None) to ``index`` unless that already
    holds these bytes (a re-run changes nothing); -> the shard's samples."""
    offsets = build_index(shard) if offsets is None else offsets
    size = os.path.getsize(shard)
    try:
        current = read_index(index, shard_bytes=size)
    except DataError:
        current = None
    if current is None or current.tobytes() != array.array("Q", offsets).tobytes():
        write_index(index, offsets, size)
    return len(offsets) - 1


def index_shards(directory: str | os.PathLike, *, split: str | None = None) -> dict:
    """Write the byte-offset index of every shard of ``directory`` beside it, without rewriting a
    shard (for shards written by webdataset's ShardWriter, tarp, img2dataset ...); -> the
    ``dataset.json`` it leaves there.

    With a ``dataset.json``: its shards are indexed, each sample count is checked against the
    shard (a mismatch is a :class:`DataError`: the count is what exact epochs trust) and each
    entry gets its ``"index"``. Without one: the ``*.tar`` files there are indexed and a
    ``dataset.json`` is written with their counts and sizes, each in the split ``split`` or
    else the one its name says (``_split_of``), and classes ``"0" .. "K-1"`` where K - 1 is the
    largest integer ``.cls`` label found (names are not in the shards; an empty list when there
    are no labels, and then training needs ``num_classes``). Indexes and ``dataset.json`` are
    written atomically and only when they change: a re-run is idempotent.
    """
    out = Path(directory)
    if not out.is_dir():
        raise DataError(f"--index {out} is not a directory")
    if (out / META_NAME).is_file():
        meta = read_meta(out)
        changed = False
        for split_name, entry in meta["splits"].items():
            for shard in entry.get("shards", []):
                name = shard.get("name") if isinstance(shard, dict) else None
                path = shard_file(out, name)
                n = _write_index_if_changed(path, Path(path + INDEX_SUFFIX))
                if n != shard["num_samples"]:
                    raise DataError(
                        f"{out / META_NAME} says shard {name!r} of split {split_name!r} holds "
                        f"{shard['num_samples']} samples, it holds {n}: correct the count first"
                    )
                if shard.get("index") != f"{name}{INDEX_SUFFIX}":
                    shard["index"] = f"{name}{INDEX_SUFFIX}"
                    changed = True
        meta.pop("format", None)
        if changed:
            write_meta(out, meta)
        return read_meta(out)
    names = sorted(p.name for p in out.glob("*.tar") if escape_problem(out, p.name) is None and p.is_file())
    if not names:
        raise DataError(f"--index {out}: no {META_NAME} and no *.tar shards there")
    labels: set[int] = set()
    splits: dict[str, dict] = {}
    for name in names:
        path = str(out / name)
        offsets = build_index(path, labels=labels)
        _write_index_if_changed(path, out / f"{name}{INDEX_SUFFIX}", offsets)
        entry = splits.setdefault(split or _split_of(name), {"num_samples": 0, "shards": []})
        n = len(offsets) - 1
        entry["num_samples"] += n
        entry["shards"].append(
            {
                "name": name,
                "num_samples": n,
                "num_bytes": os.path.getsize(path),
                "index": f"{name}{INDEX_SUFFIX}",
            }
        )
    classes = [str(c) for c in range(max(labels) + 1)] if labels and min(labels) >= 0 else []
    write_meta(
        out, {"source": f"indexed by vit_dist ({len(names)} shards)", "classes": classes, "splits": splits}
    )
    return read_meta(out)
