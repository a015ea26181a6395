"""``dataset.json``: the small index written beside a directory of shards.

It records the class names and, per split, every shard with its sample count and size in
bytes. Exact-mode epochs need the per-shard sample counts to give every rank the same number of
batches without reading the shards first, so the writer always produces this file and the
pipeline reads it when a spec names a directory (or when a shard list lives next to one).

Layout::

    {"format": "vit_dist.shards/1", "source": "digits", "classes": ["0", ...],
     "image_size": 32,
     "splits": {"train": {"num_samples": 1437,
                          "shards": [{"name": "train-000000.tar", "num_samples": 32,
                                      "num_bytes": 40960}, ...]}}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import DataError

META_NAME = "dataset.json"
FORMAT = "vit_dist.shards/1"


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Load and minimally validate ``directory/dataset.json``."""
    path = Path(directory) / META_NAME
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no {META_NAME} in {directory}: not a shard directory written by vit_dist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if meta.get("format") != FORMAT or "splits" not in meta or "classes" not in meta:
        raise DataError(f"{path} is not a {FORMAT} index (missing format/splits/classes)")
    return meta


def write_meta(directory: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``dataset.json`` atomically (temp file + rename) so a reader never sees half of it."""
    path = Path(directory) / META_NAME
    tmp = path.with_name(f".{META_NAME}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"format": FORMAT, **meta}, indent=1))
    os.replace(tmp, path)
    return path
