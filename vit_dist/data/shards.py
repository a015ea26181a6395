"""``python -m vit_dist.data.shards --from-folder DIR | --from digits --out OUT``: write shards;
``python -m vit_dist.data.shards --index DIR``: index shards written by other tools.

The command line of the shard writers (``vit_dist.data.writers``, whose docstring describes the
sources, the shard layout and why a killed writer leaves only complete shards). ``--index``
writes the byte-offset index (``index.py``) beside each shard of DIR without rewriting any,
so streams seek to their samples (``writers.index_shards`` says which shards and what
``dataset.json`` it leaves).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable

from ..core.errors import DataError
from .meta import read_meta
from .writers import index_shards, write_shards


def _positive(kind: type) -> Callable[[str], int | float]:
    """An argparse type: a finite number of ``kind`` that is at least 1 (0 px, 0-sample shards and
    0 workers would write nothing)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not (math.isfinite(value) and value >= 1):
            raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vit_dist.data.shards", description="Write WebDataset tar shards and dataset.json."
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-folder", metavar="DIR", help="ImageFolder tree (optionally train/ and val/)")
    src.add_argument("--from", dest="builtin", choices=["digits"], help="a bundled data set")
    src.add_argument(
        "--index",
        metavar="DIR",
        help="write <shard>.idx beside each shard of DIR (those its dataset.json lists, else its *.tar, "
        "then also writing a dataset.json)",
    )
    p.add_argument("--out", help="output directory for the shards and dataset.json")
    p.add_argument("--split", help="--index without a dataset.json: put every shard in this split")
    p.add_argument(
        "--shard-samples", type=_positive(int), default=None, help="max samples per shard (default 1000)"
    )
    p.add_argument("--shard-bytes", type=_positive(float), default=None, help="max bytes per shard, e.g. 1e9")
    p.add_argument(
        "--resize", type=_positive(int), default=None, help="folders: shrink the shorter side to this"
    )
    p.add_argument("--img-size", type=_positive(int), default=32, help="digits: output side (default 32)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality when re-encoding")
    p.add_argument(
        "--workers", type=_positive(int), default=max(1, (os.cpu_count() or 1) - 1), help="encoding processes"
    )
    p.add_argument("--seed", type=int, default=0, help="sample shuffle (and digits split) seed")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the data set in --out: removes only the shards its dataset.json lists",
    )
    args = p.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.index:
        return _index(args.index, args.split)
    if not args.out:
        p.error("--out is required with --from-folder / --from")
    shard_samples = args.shard_samples if args.shard_samples or args.shard_bytes else 1000
    try:
        out = write_shards(
            args.from_folder or args.builtin,
            args.out,
            img_size=args.img_size,
            resize=args.resize,
            shard_samples=shard_samples,
            shard_bytes=int(args.shard_bytes) if args.shard_bytes else None,
            quality=args.quality,
            workers=args.workers,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = read_meta(out)
    for split, s in meta["splits"].items():
        print(
            f"{split}: {s['num_samples']} samples in {len(s['shards'])} shards ({s['skipped']} skipped) -> {out}"
        )
    return 0


def _index(directory: str, split: str | None) -> int:
    try:
        meta = index_shards(directory, split=split)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, s in meta["splits"].items():
        print(f"{name}: {s['num_samples']} samples in {len(s['shards'])} shards indexed -> {directory}")
    print(
        f"classes: {len(meta['classes'])}"
        + ("" if meta["classes"] else " (unknown: set num_classes to train)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
