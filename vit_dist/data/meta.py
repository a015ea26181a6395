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
                                      "num_bytes": 40960, "index": "train-000000.tar.idx"},
                                     ...]}}}

``index`` (optional) names the shard's byte-offset index (``index.py``), a file in the same
directory validated like a shard name; without it the loader looks for ``<shard>.idx``.

Shard names are data, never commands: a name listed here is a file inside the directory that
holds the index (:func:`shard_file` enforces it), so a ``dataset.json`` from elsewhere cannot make
a reader run a ``pipe:`` command, fetch a URL, or open a file outside its directory. Only a spec
the user typed may be a URL (``spec.py``).

While the writer swaps a new data set in, the index briefly lists its shards inside a hidden
staging directory (``.vit_dist-staging-*/train-000000.tar``, indexes likewise) and carries ``"replaces"``: the
previous data set's files still to be removed (``writers._publish``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..core.atomic import write_json
from ..core.errors import DataError
from ..core.files import Fields, load_json
from .counts import check_index_counts

META_NAME = "dataset.json"
FORMAT = "vit_dist.shards/1"

# "pipe:...", "file:...", "s3:...", "c:...": a scheme (or drive) prefix, which an opener reads as a URL.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


META_LIMIT = 64 * 1024 * 1024  # bytes: a million shards' entries


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Load and validate ``directory/dataset.json``: bounded and parsed by ``core.files``, then
    every field this package reads checked for its type (one DataError line naming the file
    and the field), every shard count by ``counts.check_index_counts``."""
    path = Path(directory) / META_NAME
    if not path.exists():
        raise DataError(f"no {META_NAME} in {directory}: not a shard directory written by vit_dist")
    meta = load_json(path, limit=META_LIMIT, error=DataError, what="data set index")
    top = Fields(meta, source=str(path), error=DataError)
    if meta.get("format") != FORMAT or "splits" not in meta or "classes" not in meta:
        raise DataError(f"{path} is not a {FORMAT} index (missing format/splits/classes)")
    top.texts("classes")
    top.integer("image_size", minimum=1, required=False)
    top.text("source", required=False)
    top.texts("replaces", required=False)
    splits = top.section("splits")
    assert splits is not None  # required
    for split in splits.obj:
        entry = splits.section(split)
        assert entry is not None
        entry.integer("num_samples", minimum=0, required=False)
        for i, shard in enumerate(entry.array("shards")):
            f = Fields(shard, source=str(path), error=DataError, prefix=f"splits.{split}.shards[{i}].")
            f.text("name")
            f.integer("num_bytes", minimum=0, required=False)
            f.text("index", required=False)
    check_index_counts(meta, path)
    return meta


def write_meta(directory: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``dataset.json`` atomically (temp file + fsync + rename) so a reader never sees half
    of it and, since the writer publishes a data set by writing it, it survives a crash."""
    return write_json(Path(directory) / META_NAME, {"format": FORMAT, **meta})


def escape_problem(directory: str | os.PathLike, name: object) -> str | None:
    """Why ``name`` (relative to ``directory``) does not stay inside ``directory``, or None.

    Refused: an absolute path, an empty, ``.`` or ``..`` component, a backslash or NUL, and a
    name whose symlinks resolve outside the (resolved) directory. Symlinks that point elsewhere
    inside the directory are fine; a symlink farm pointing at shards on another disk is refused,
    because a name found in a data directory must never lead a reader outside it: name the real
    directory (or its files) in the spec instead.
    """
    if not isinstance(name, str) or not name:
        return "not a file name"
    if "\\" in name or "\0" in name:
        return "a backslash or NUL in the name"
    if name.startswith("/"):
        return "an absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "an empty, '.' or '..' path component"
    root = os.path.realpath(directory)
    if os.path.commonpath([root, os.path.realpath(os.path.join(root, name))]) != root:
        return "a symlink that leads outside the directory"
    return None


def index_name_problem(directory: str | os.PathLike, name: object) -> str | None:
    """Why ``name``, as listed in ``directory``'s ``dataset.json``, is not a plain file inside
    ``directory`` (see :func:`escape_problem`; also refused: any ``scheme:`` prefix), or None."""
    if isinstance(name, str) and _SCHEME.match(name):
        return "a URL or command, which only a spec you type may be"
    return escape_problem(directory, name)


def shard_file(directory: str | os.PathLike, name: object) -> str:
    """The absolute path of the shard ``name`` listed in ``directory``'s ``dataset.json``.

    Raises :class:`DataError` (one line naming the entry and the index) when the name is not a
    plain file inside ``directory`` or is missing. The path is absolute so that no opener can
    take it for a URL or for ``-`` (stdin).
    """
    index = Path(directory) / META_NAME
    problem = index_name_problem(directory, name)
    if problem is not None or not isinstance(name, str):  # no problem: a str
        raise DataError(
            f"{index} lists shard {name!r}, which is not a file inside {directory} ({problem}): "
            f"list plain relative file names only"
        )
    path = os.path.join(os.path.abspath(directory), name)
    if not os.path.exists(path):
        raise DataError(f"shard {path} listed in {index} does not exist")
    if not os.path.isfile(path):
        raise DataError(f"shard {path} listed in {index} is not a regular file")
    return path
