"""Checkpoint manifests: what each file of a checkpoint was when it was written, and whether it
still is (``checkpoint.verify_checkpoint`` applies this to a whole checkpoint).

The manifest, and why checking it stays cheap for multi-GB checkpoints. At save time each
file is read back once from the page cache (it was just written) for its CRC-32 -- CRC rather
than a cryptographic hash because it guards against damage, not tampering (loading never runs
code anyway), and it is several times faster, which matters on the save's critical path.
The manifest records per file its size, the CRC-32 of the whole file and the CRC-32 of a
sample: the whole file when it is at most 2 MiB (rank files, small state files), else 8 blocks
of 256 KiB spread evenly from the first byte to the last (``_sample_ranges``). meta.json holds
a CRC-32 of its own content. The default check (resume, evaluate, export, a teacher) stats
every file and reads only the samples: at most 2 MiB per file whatever its size, so it
catches a missing, truncated or emptied file, a zero-filled or garbled tail or head (what a
power loss leaves) and any change to a small file or to meta.json, but not a flipped byte in
the middle of a large file. ``full=True`` reads every byte and compares the whole-file CRC: it
catches that too, at the cost of reading the whole checkpoint. ``resume=auto`` skips damaged
checkpoints (one warning naming them) for the newest intact one; a checkpoint named by path
must be intact.
"""

from __future__ import annotations

import errno
import json
import os
import zlib
from pathlib import Path

_SAMPLE_BLOCK = 256 << 10
_SAMPLE_BLOCKS = 8  # per file: the first and last block and 6 spread between them
_READ_CHUNK = 8 << 20


def _crc_all(fh) -> int:
    """CRC-32 of an open file from its start to its end."""
    fh.seek(0)
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    crc = 0
    while n := fh.readinto(buf):
        crc = zlib.crc32(view[:n], crc)
    return crc


def _sample_ranges(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the blocks the cheap check reads: the whole of a small file, else
    ``_SAMPLE_BLOCKS`` blocks spread evenly from the first byte to the last."""
    if size <= _SAMPLE_BLOCK * _SAMPLE_BLOCKS:
        return [(0, size)]
    last = size - _SAMPLE_BLOCK
    return [(last * i // (_SAMPLE_BLOCKS - 1), _SAMPLE_BLOCK) for i in range(_SAMPLE_BLOCKS)]


def _crc_sample(fh, size: int) -> int:
    crc = 0
    for offset, length in _sample_ranges(size):
        fh.seek(offset)
        crc = zlib.crc32(fh.read(length), crc)
    return crc


def file_record(path: Path) -> dict:
    """Make ``path`` durable (fsync) and describe it for the manifest: its size, the CRC-32 of
    all of it and of its sample, read back from the page cache right after writing."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
        size = os.fstat(fh.fileno()).st_size
        return {"size": size, "crc32": f"{_crc_all(fh):08x}", "sample_crc32": f"{_crc_sample(fh, size):08x}"}


def meta_crc(meta: dict) -> str:
    """CRC-32 of meta.json's content but this checksum (keys sorted, as JSON reads it back)."""
    body = {k: v for k, v in meta.items() if k != "meta_crc32"}
    return f"{zlib.crc32(json.dumps(body, sort_keys=True).encode()):08x}"


def check_file(ckpt: Path, name: str, record: dict, *, full: bool) -> str | None:
    """What is wrong with one file of the manifest, or None when it matches."""
    if not isinstance(record, dict) or Path(name).is_absolute() or ".." in Path(name).parts:
        return f"its manifest entry for {name!r} is malformed"
    path = ckpt / name
    try:
        size = path.stat().st_size
        if size != record.get("size"):
            return f"{name} is {size} bytes, {record.get('size')} were written (truncated or overwritten)"
        with open(path, "rb") as fh:
            key, crc = ("crc32", _crc_all(fh)) if full else ("sample_crc32", _crc_sample(fh, size))
    except FileNotFoundError:
        return f"{name} is missing"
    except OSError as e:
        return f"{name} cannot be read ({os_reason(e)})"
    if f"{crc:08x}" != record.get(key):
        return f"{name} does not match its checksum (its content changed after it was written)"
    return None


def expected_files(meta: dict) -> list[str]:
    """Files every complete checkpoint of this meta has (the manifest must list them)."""
    payload = "dcp/.metadata" if meta.get("fsdp") else "state.pt"
    world_size = meta.get("world_size")
    ranks = world_size if isinstance(world_size, int) else 1
    return [payload, *(f"rank-{r:05d}.pt" for r in range(ranks))]


def os_reason(e: OSError) -> str:
    """``No space left on device [ENOSPC]: /path``: the OS reason of a failed file operation."""
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    text = e.strerror or str(e) or type(e).__name__
    return f"{text}{f' [{name}]' if name else ''}{f': {e.filename}' if e.filename else ''}"
