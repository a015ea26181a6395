"""Per-shard byte-offset index: where each sample of a tar shard starts, so a reader seeks to it.

A sidecar beside each shard, ``<shard file name>.idx`` (``train-000003.tar.idx``), binary and
little-endian::

    8 bytes   magic b"VDIDX001"
    uint64    n            samples in the shard
    uint64    shard_bytes  the shard file's size when it was indexed (staleness check)
    uint64 x (n + 1)       offsets: offsets[i] is where sample i's first member header starts
                           (its GNU longname / pax header included); offsets[n] is where the
                           last sample's data ends (what follows is end-of-archive blocks)

so the file is exactly ``24 + 8 * (n + 1)`` bytes. Samples are grouped exactly as
``tar_reader`` groups them (consecutive file members sharing a key). The writer
(``writers.py``) writes one beside every shard; ``python -m vit_dist.data.shards --index DIR``
builds them for shards written by other tools. ``dataset.json`` may name a shard's index
(``"index": "train-000003.tar.idx"``); without that entry the sidecar name is looked for.

An index is only ever an optimisation: the loader checks it against the shard (size) and its
``dataset.json`` count, and an index that is missing, stale or malformed is logged once and the
shard is streamed through from its start, as without one (:func:`load_offsets`).
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import sys
import tarfile

from ..core.atomic import write_bytes
from ..core.errors import DataError
from ..core.files import read_bytes, read_head
from .tar_reader import member_data, split_name

log = logging.getLogger("vit_dist.data")

INDEX_SUFFIX = ".idx"
MAGIC = b"VDIDX001"
HEADER_BYTES = 24
_BLOCK = 512  # tar's block: every member header starts at a multiple of it
_REBUILD = "rebuild it with python -m vit_dist.data.shards --index DIR"

# Indexes already reported as unusable in this process: one warning per index and problem.
_warned: set[tuple[str, str]] = set()


def _as_le(offsets: array.array) -> bytes:
    if sys.byteorder == "little":
        return offsets.tobytes()
    swapped = array.array("Q", offsets)
    swapped.byteswap()
    return swapped.tobytes()


# The most samples one shard's index may list (a 128 MiB index): far above any real shard, so
# a corrupt header cannot make the reader allocate or read without bound.
MAX_INDEX_SAMPLES = 2**24


# An index is a regular file (a FIFO or device is refused, never waited on) of at most the size
# MAX_INDEX_SAMPLES need.
_INDEX_LIMIT = HEADER_BYTES + 8 * (MAX_INDEX_SAMPLES + 1)


def _parse_header(path: str | os.PathLike, head: bytes, size: int) -> tuple[int, int]:
    if len(head) < HEADER_BYTES or head[:8] != MAGIC:
        raise DataError(f"index {path} is not a vit_dist shard index (bad magic or too short): {_REBUILD}")
    n = int.from_bytes(head[8:16], "little")
    shard_bytes = int.from_bytes(head[16:24], "little")
    if size != HEADER_BYTES + 8 * (n + 1):
        raise DataError(
            f"index {path} is {size} bytes, but {n} samples need {HEADER_BYTES + 8 * (n + 1)} "
            f"(truncated or corrupt): {_REBUILD}"
        )
    return n, shard_bytes


def read_header(path: str | os.PathLike) -> tuple[int, int]:
    """``(n, shard_bytes)`` of the index at ``path`` after checking its magic and exact size,
    without reading the offsets (what the start-up report needs). Raises :class:`DataError`."""
    return _parse_header(
        path, *read_head(path, HEADER_BYTES, limit=_INDEX_LIMIT, error=DataError, what="index")
    )


def _expectations(path, n: int, stored_bytes: int, num_samples: int | None, shard_bytes: int | None) -> None:
    if num_samples is not None and n != num_samples:
        raise DataError(f"index {path} lists {n} samples, dataset.json {num_samples} (stale): {_REBUILD}")
    if shard_bytes is not None and stored_bytes != shard_bytes:
        raise DataError(
            f"index {path} was built for a shard of {stored_bytes} bytes, the shard has {shard_bytes} "
            f"(stale): {_REBUILD}"
        )


def read_index(
    path: str | os.PathLike, *, num_samples: int | None = None, shard_bytes: int | None = None
) -> array.array:
    """The ``n + 1`` offsets of the index at ``path`` (see the module docstring).

    Raises :class:`DataError` (one line) on a bad magic or size, offsets that are not
    block-aligned and strictly increasing or that point past the indexed shard's end, and on a
    sample count or shard size other than the given ``num_samples`` / ``shard_bytes``."""
    data = read_bytes(path, limit=_INDEX_LIMIT, error=DataError, what="index")
    n, stored_bytes = _parse_header(path, data, len(data))
    _expectations(path, n, stored_bytes, num_samples, shard_bytes)
    offsets = array.array("Q")
    offsets.frombytes(data[HEADER_BYTES:])
    if sys.byteorder != "little":
        offsets.byteswap()
    bad = next((i for i, o in enumerate(offsets) if o % _BLOCK), None)
    if bad is not None:
        raise DataError(
            f"index {path}: offset {bad} ({offsets[bad]}) is not at a tar block boundary: {_REBUILD}"
        )
    bad = next((i for i in range(n) if offsets[i] >= offsets[i + 1]), None)
    if bad is not None:
        raise DataError(f"index {path}: offsets are not increasing at sample {bad}: {_REBUILD}")
    if offsets[n] > stored_bytes:
        raise DataError(
            f"index {path}: samples end at byte {offsets[n]}, past the end of the {stored_bytes}-byte "
            f"shard: {_REBUILD}"
        )
    return offsets


def write_index(path: str | os.PathLike, offsets, shard_bytes: int) -> None:
    """Write the index of a shard of ``shard_bytes`` bytes with ``len(offsets) - 1`` samples,
    atomically (a reader sees the old index or the new one)."""
    offsets = array.array("Q", offsets)
    if not offsets:
        raise DataError(f"index {path}: no offsets (a shard with n samples has n + 1)")
    n = len(offsets) - 1
    head = MAGIC + n.to_bytes(8, "little") + int(shard_bytes).to_bytes(8, "little")
    write_bytes(path, head + _as_le(offsets))


def build_index(shard_path: str | os.PathLike, *, labels: set[int] | None = None) -> array.array:
    """The offsets of the local, uncompressed tar at ``shard_path``, from its headers alone
    (member data is seeked past, never read or decoded). Raises :class:`DataError` for a shard
    that cannot be indexed: unreadable, compressed, truncated, or with a pax global header
    (which changes every later member: a reader that seeks past it would see other names).
    ``labels``, when given, also collects the integer ``.cls`` values (a few bytes each)."""
    offsets = array.array("Q")
    end = 0
    key = None
    try:
        size = os.path.getsize(shard_path)
        with tarfile.open(shard_path, "r:") as tar:  # "r:": plain tar only; seeks over data
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = split_name(member.name)
                if k != key:
                    offsets.append(member.offset)
                    key = k
                end = member.offset_data + -(-member.size // _BLOCK) * _BLOCK
                if labels is not None and ext == "cls" and member.size <= 64:
                    with contextlib.suppress(ValueError, UnicodeDecodeError):
                        labels.add(int(member_data(tar, member).read().decode().strip()))
            globals_ = {k: v for k, v in tar.pax_headers.items() if k != "comment"}
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(
            f"cannot index shard {shard_path} (a plain, complete tar?): {type(e).__name__}: {e}"
        ) from None
    if globals_:
        raise DataError(
            f"cannot index shard {shard_path}: its pax global header ({', '.join(sorted(globals_))}) "
            f"applies to every member, so no sample can be read without reading it first"
        )
    if end > size:
        raise DataError(
            f"cannot index shard {shard_path}: its last member ends past the end of the file (truncated)"
        )
    offsets.append(end if offsets else 0)
    return offsets


def index_shard(shard_path: str | os.PathLike, index_path: str | os.PathLike | None = None) -> int:
    """Build and write the index of ``shard_path`` (beside it unless ``index_path``); -> samples."""
    offsets = build_index(shard_path)
    write_index(index_path or f"{shard_path}{INDEX_SUFFIX}", offsets, os.path.getsize(shard_path))
    return len(offsets) - 1


def _local_size(shard_path: str) -> int | None:
    """The size of a local shard; None for an http(s) one, whose size every range request
    checks instead (``tar_reader``)."""
    return os.path.getsize(shard_path) if os.path.isabs(shard_path) else None


def usable_index(index_path: str | None, shard_path: str, num_samples: int) -> str | None:
    """Why the index at ``index_path`` cannot be used to seek in the shard ``shard_path`` of
    ``num_samples`` samples (every check :func:`read_index` makes), or None when it can."""
    if index_path is None:
        return "no index"
    try:
        read_index(index_path, num_samples=num_samples, shard_bytes=_local_size(shard_path))
    except (DataError, OSError) as e:
        return str(e)
    return None


def load_offsets(index_path: str | None, shard_path: str, num_samples: int) -> array.array | None:
    """The offsets to seek by in ``shard_path``, or None (stream through from the start) when
    there is no index or it is unusable; an unusable one is warned about once per process
    (per problem: one that changes is reported again)."""
    if index_path is None:
        return None
    try:
        return read_index(index_path, num_samples=num_samples, shard_bytes=_local_size(shard_path))
    except (DataError, OSError) as e:
        if (index_path, str(e)) not in _warned:
            _warned.add((index_path, str(e)))
            log.warning("%s; reading shard %s from its start instead", e, shard_path)
        return None
