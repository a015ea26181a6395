"""Shard specs -> a concrete shard list (URLs plus, when known, samples per shard).

Accepted specs (a string, or a list of them; ``::`` also separates several in one string):

* a directory written by ``python -m vit_dist.data.shards``: its ``dataset.json`` gives the
  shards of the requested split, their sample counts and the class names;
* local paths, brace patterns (``train-{000000..000127}.tar``) and globs (``train-*.tar``);
  sample counts come from a ``dataset.json`` in the same directory when there is one, else
  (only when exact mode asks) from reading the tar headers;
* any URL webdataset's ``gopen`` can open (``pipe:aws s3 cp s3://b/train-000001.tar -``,
  ``http(s)://``, ``gs://`` ...), with brace patterns. Remote shards cannot be checked or
  counted at start-up, so exact mode needs a ``dataset.json`` (``meta=``) for them. An
  ``http(s)://`` shard whose index (``index.py``) lies in that ``meta`` directory is read by
  HTTP Range requests, so streams sharing it seek; other URLs are read from their start.

Errors are raised here, at start-up, as :class:`DataError` naming the spec: a pattern that
matches nothing, a missing path, a split absent from ``dataset.json``.

Only a spec the user typed (config or command line) may be a URL or a ``pipe:`` command. A name
read from a ``dataset.json`` or found by expanding a glob is data: it must be a regular file
inside that directory (the glob's directory: its path up to the first wildcard), else the spec
is refused with a :class:`DataError` naming the entry and the directory. Symlinks are followed
only while they stay inside that directory (see ``meta.escape_problem``). Every local shard in a
:class:`ShardList` is an absolute path, which the tar reader opens as a plain file: no file name,
however odd (``pipe:touch x;.tar``, ``-``), is ever handed to an opener that could read it as a
command or URL.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from webdataset.shardlists import expand_urls

from ..core.errors import DataError
from .index import INDEX_SUFFIX
from .meta import META_NAME, escape_problem, index_name_problem, read_meta, shard_file
from .tar_reader import is_http

# "pipe:cmd", "s3://...", "https://..." but not "file:" (local) and not a Windows drive letter.
_REMOTE = re.compile(r"^(?!file:)[A-Za-z][A-Za-z0-9+.\-]+:")


@dataclass(frozen=True)
class ShardList:
    """The resolved shards, in spec order. ``sizes[i]`` is the sample count of ``urls[i]``.

    A local shard is an absolute path (opened as a plain file); anything else is a URL the user
    typed (opened with webdataset's ``gopen``)."""

    urls: list[str]
    sizes: list[int] | None
    classes: list[str] | None
    spec: str
    # indexes[i]: the byte-offset index (index.py) of shard urls[i], when there is one: for a local
    # shard dataset.json's "index" entry, else the sidecar <shard>.idx; for an http(s) shard the
    # one in the meta= directory; None for other URLs (pipe:, s3:// ... cannot seek).
    indexes: list[str | None] | None = None

    @property
    def num_samples(self) -> int | None:
        return None if self.sizes is None else sum(self.sizes)

    def counted_sizes(self) -> list[int]:
        """``sizes``, where they must be known (an exact epoch: :func:`with_sizes`)."""
        if self.sizes is None:
            raise DataError(f"the sample counts of the shards of {self.spec} are unknown")
        return self.sizes


def is_remote(url: str) -> bool:
    return bool(_REMOTE.match(url))


def resolve_shards(
    spec: str | os.PathLike | list, split: str = "train", meta: str | None = None
) -> ShardList:
    """Resolve ``spec`` to a :class:`ShardList`; ``meta`` is an optional ``dataset.json`` directory
    whose shard counts apply to the resolved shards (matched by file name)."""
    parts = [str(p) for p in spec] if isinstance(spec, (list, tuple)) else str(spec).split("::")
    parts = [p for p in parts if p.strip()]
    if not parts:
        raise DataError(f"empty shard spec {spec!r}")
    lists = [_resolve_one(p.strip(), split) for p in parts]
    urls = [u for sl in lists for u in sl.urls]
    classes = next((sl.classes for sl in lists if sl.classes is not None), None)
    known = [sl.sizes for sl in lists if sl.sizes is not None]
    sizes = [n for s in known for n in s] if len(known) == len(lists) else None
    indexes = [i for sl in lists for i in (sl.indexes or [None] * len(sl.urls))]
    if meta is not None:
        index = read_meta(meta)
        by_name = {s["name"]: s["num_samples"] for sp in index["splits"].values() for s in sp["shards"]}
        missing = [u for u in urls if _basename(u) not in by_name]
        if missing:
            raise DataError(f"{Path(meta) / META_NAME} has no sample count for shard {missing[0]}")
        sizes = [by_name[_basename(u)] for u in urls]
        classes = classes or index["classes"]
        # An http(s) shard can be read by byte ranges: its index lies in the meta directory.
        listed = {s["name"]: s.get("index") for sp in index["splits"].values() for s in sp["shards"]}
        indexes = [
            index_file(os.path.join(os.path.abspath(meta), _basename(u)), listed[_basename(u)], meta)
            if is_http(u)
            else i
            for u, i in zip(urls, indexes)
        ]
    return ShardList(urls=urls, sizes=sizes, classes=classes, spec=str(spec), indexes=indexes)


def _basename(url: str) -> str:
    """The shard's file name, also inside a ``pipe:`` command (the last ``*.tar`` word in it)."""
    if not is_remote(url):
        return Path(url).name
    names = re.findall(r"[^/\s'\"]+\.(?:tar|tgz|tar\.gz)(?=$|[\s'\"|;])", url)
    return names[-1] if names else re.split(r"[/\s]", url.rstrip())[-1]


def _resolve_one(part: str, split: str) -> ShardList:
    if is_remote(part):
        # Remote: expand braces only; existence is discovered (and counted as bad) when read.
        return ShardList(urls=expand_urls(part), sizes=None, classes=None, spec=part)
    local = re.sub(r"^file:(//)?", "", part)  # file:///a/b -> /a/b, file:rel -> rel
    if os.path.isdir(local):
        return _from_directory(Path(local), split)
    paths: list[str] = []
    for pattern in expand_urls(local):
        if glob.has_magic(pattern):
            hits = sorted(glob.glob(pattern))
            if not hits:
                raise DataError(f"shard pattern {pattern!r} (from spec {part!r}) matches no file")
            paths.extend(_glob_hit(hit, pattern, part) for hit in hits)
        elif not os.path.isfile(pattern):
            raise DataError(f"shard {pattern!r} (from spec {part!r}) does not exist")
        else:
            paths.append(os.path.abspath(pattern))
    sizes = classes = None
    parents = {str(Path(p).parent) for p in paths}
    if len(parents) == 1 and (Path(next(iter(parents))) / META_NAME).is_file():
        meta = read_meta(next(iter(parents)))
        by_name = {s["name"]: s["num_samples"] for sp in meta["splits"].values() for s in sp["shards"]}
        if all(Path(p).name in by_name for p in paths):
            sizes = [by_name[Path(p).name] for p in paths]
        classes = meta["classes"]
    return ShardList(
        urls=paths, sizes=sizes, classes=classes, spec=part, indexes=[index_file(p) for p in paths]
    )


def index_file(path: str, name: object = None, directory: str | os.PathLike | None = None) -> str | None:
    """The index of the shard at local ``path`` (an http(s) shard: where it would lie in the meta
    directory): the file ``name`` that ``directory``'s dataset.json lists for it, else
    ``<shard>.idx`` beside it when that is a file. A listed name must stay
    inside ``directory`` like a shard name (``meta.index_name_problem``); the loader checks the
    index itself before using it (``index.load_offsets``)."""
    if name is not None:
        if directory is None:
            raise TypeError(f"index_file: the listed index {name!r} needs the directory that lists it")
        directory = os.path.abspath(directory)
        problem = index_name_problem(directory, name)
        if problem is not None or not isinstance(name, str):  # no problem: a str
            raise DataError(
                f"{os.path.join(directory, META_NAME)} lists index {name!r}, which is not a file inside "
                f"{directory} ({problem}): list plain relative file names only"
            )
        return os.path.join(directory, name)
    sidecar, parent = path + INDEX_SUFFIX, os.path.dirname(path)
    return (
        sidecar
        if escape_problem(parent, os.path.basename(sidecar)) is None and os.path.isfile(sidecar)
        else None
    )


def _glob_base(pattern: str) -> str:
    """The directory a glob expands inside: its path up to the first component with a wildcard."""
    parts = pattern.split("/")
    fixed = itertools.takewhile(lambda p: not glob.has_magic(p), parts[:-1])
    return "/".join(fixed) or ("/" if pattern.startswith("/") else ".")


def _glob_hit(hit: str, pattern: str, part: str) -> str:
    """The absolute path of ``hit``, a match of ``pattern``, once it is known to be a regular file
    inside the glob's directory (a file's name is data, never a URL: see the module docstring)."""
    base = _glob_base(pattern)
    problem = escape_problem(base, os.path.relpath(hit, base))
    if problem is None and not os.path.isfile(hit):
        problem = "not a regular file"
    if problem is not None:
        raise DataError(
            f"shard {hit!r} matched by {pattern!r} (from spec {part!r}) is not a file inside "
            f"{os.path.abspath(base)} ({problem})"
        )
    return os.path.abspath(hit)


def _from_directory(directory: Path, split: str) -> ShardList:
    meta = read_meta(directory)
    if split not in meta["splits"]:
        raise DataError(
            f"{directory / META_NAME} has no split {split!r} (it has: {', '.join(sorted(meta['splits']))})"
        )
    shards = meta["splits"][split]["shards"]
    if not shards:
        raise DataError(f"split {split!r} of {directory} has no shards")
    urls = [shard_file(directory, s.get("name") if isinstance(s, dict) else None) for s in shards]
    return ShardList(
        urls=urls,
        sizes=[int(s["num_samples"]) for s in shards],
        classes=meta["classes"],
        spec=str(directory),
        indexes=[index_file(u, s.get("index"), directory) for u, s in zip(urls, shards)],
    )


def count_tar_samples(path: str) -> int:
    """Number of distinct sample keys in a local tar (reads headers only, seeking past data)."""
    keys = set()
    try:
        with tarfile.open(path, "r:") as tf:
            for member in tf:
                if member.isfile():
                    keys.add(_sample_key(member.name))
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"cannot count samples in shard {path}: {e}") from None
    return len(keys)


def with_sizes(shards: ShardList) -> ShardList:
    """Return ``shards`` with per-shard sample counts, counting local tars when they are unknown."""
    if shards.sizes is not None:
        return shards
    remote = [u for u in shards.urls if is_remote(u)]
    if remote:
        raise DataError(
            f"exact epochs need per-shard sample counts and remote shard {remote[0]} has none: pass the "
            f"dataset.json directory as meta=..., or use mode='resampled'"
        )
    sizes = [count_tar_samples(u) for u in shards.urls]
    return ShardList(shards.urls, sizes, shards.classes, shards.spec, shards.indexes)


def _sample_key(name: str) -> str:
    """webdataset's grouping rule: the key is the path up to the first dot of the base name."""
    directory, _, base = name.rpartition("/")
    stem = base.split(".", 1)[0]
    return f"{directory}/{stem}" if directory else stem
