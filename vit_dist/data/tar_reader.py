"""Tar shard -> raw samples, robust to truncated or unreadable shards.

A sample is the group of consecutive tar members sharing a key (webdataset convention:
``dir/key.ext``, the key ends at the first dot of the base name); it is returned as a dict
``{"__key__", "__url__", ext: bytes, ...}`` with the bytes left encoded.

Reading a *slice* ``[start, stop)`` streams through the first ``start`` samples without keeping
their bytes (tar is sequential; this also works through ``pipe:`` URLs) and stops reading after
``stop``. The promise to the planner is exact: a slice with a known ``stop`` yields exactly
``stop - start`` items. When the shard cannot be opened, is truncated, or holds fewer samples
than ``dataset.json`` says, the missing samples are yielded as :class:`BadSample` placeholders
(counted downstream as ``bad_samples``) so batch counts, and with them the collectives of
every rank, stay in step. One warning is logged per failing shard.

A member whose header declares more than ``max_bytes`` (``data.max_sample_bytes``) is never
read into memory: its sample becomes a :class:`BadSample`, and its data is streamed past in
bounded chunks, so a 10 KB tar whose header claims 40 GB ends the shard's reading (the rest
counts as bad) instead of allocating 40 GB or seeking block by block through a lie.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from webdataset.gopen import gopen

from .counts import note_uncounted

log = logging.getLogger("vit_dist.data")

# The default of data.max_sample_bytes: a 224 px training sample is some 100 KB, a full-size
# photo a few MB; a member this large is a mistake or a hostile header.
DEFAULT_MAX_SAMPLE_BYTES = 64 * 2**20
_DRAIN_CHUNK = 2**20  # an oversized member is streamed past in pieces of this size


@dataclass(frozen=True)
class BadSample:
    """A sample that could not be produced; ``reason`` ends up in the log."""

    key: str
    reason: str


def _split_name(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def read_slice(
    url: str, start: int = 0, stop: int | None = None, max_bytes: int = DEFAULT_MAX_SAMPLE_BYTES
) -> Iterator[dict | BadSample]:
    """Samples ``[start, stop)`` of the shard at ``url`` (see the module docstring)."""
    return read_runs(url, [(start, stop)], max_bytes=max_bytes)


def _missing_samples(
    url: str, runs: list[tuple[int, int | None]], delivered: int, reason: str
) -> Iterator[BadSample]:
    """Placeholders for the wanted samples after the first ``delivered`` (a resampled read, whose
    last run has no end, has exactly one: the rest of an unknown-length shard)."""
    if runs[-1][1] is None:
        yield BadSample(f"{url}#{runs[-1][0]}", reason)
        return
    wanted = itertools.chain.from_iterable(range(a, b) for a, b in runs)
    for i in itertools.islice(wanted, delivered, None):
        yield BadSample(f"{url}#{i}", reason)


def _stream_past(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Read through ``member``'s data a chunk at a time, keeping none of it. tarfile would skip
    it by reading the same bytes, but one block per call and without stopping at the end of
    the stream, which a header declaring terabytes turns into a near-endless loop; here a
    header that lies ends in ``tarfile.ReadError`` at the end of the data."""
    f = tar.extractfile(member)
    try:
        while f.read(_DRAIN_CHUNK):
            pass
    except tarfile.ReadError:
        raise tarfile.ReadError(
            f"member {member.name} declares {member.size} bytes, more than the shard holds"
        ) from None


def _finished(sample: dict, oversized: str | None) -> dict | BadSample:
    """The assembled sample, or a BadSample saying which of its members was over the limit."""
    if oversized is None:
        return sample
    return BadSample(f"{sample['__url__']}#{sample['__key__']}", oversized)


def read_runs(
    url: str,
    runs: list[tuple[int, int | None]],
    max_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    count: int | None = None,
) -> Iterator[dict | BadSample]:
    """The samples of the shard at ``url`` whose indices fall in ``runs``, in one pass.

    ``runs`` are sorted, disjoint ``(start, stop)`` index ranges; only the last may have
    ``stop=None`` (to the end of the shard). Samples between runs are streamed past unread. A
    mid-epoch re-plan (``plan.py``) hands a stream scattered samples of a shard, which one pass
    reads in the time of one slice. A sample with a member over ``max_bytes`` is a
    :class:`BadSample` (see the module docstring). ``count``: the samples ``dataset.json`` says
    the shard holds; a shard that goes on past it is warned about (its extra samples are never
    read, so they must not go unnoticed).
    """
    runs = list(runs)
    last_stop = runs[-1][1]
    run = 0  # the first run that does not end before the sample being assembled

    def wanted(i: int) -> bool:
        nonlocal run
        while run < len(runs) and runs[run][1] is not None and runs[run][1] <= i:
            run += 1
        return run < len(runs) and runs[run][0] <= i

    index = -1  # index of the sample being assembled
    current: dict | None = None
    oversized: str | None = None  # why the current sample is bad: a member over max_bytes
    keep = False
    yielded = 0
    stream = None
    try:
        # A local shard (spec.py makes each one an absolute path) is a plain file: its name is never
        # parsed as a URL or pipe: command. gopen is for the URLs a user typed.
        stream = open(url, "rb") if os.path.isabs(url) else gopen(url, "rb")  # noqa: SIM115
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                if current is None or key != current["__key__"]:
                    if current is not None and keep:
                        yield _finished(current, oversized)
                        yielded += 1
                    index += 1
                    if last_stop is not None and index >= last_stop:
                        if count is not None and last_stop >= count:
                            note_uncounted(url, count)
                        current = None
                        break
                    keep = wanted(index)
                    current, oversized = {"__key__": key, "__url__": url}, None
                if member.size > max_bytes:  # never read into memory, whether wanted or not
                    if keep and oversized is None:
                        oversized = (
                            f"sample {url}#{key}: member {member.name} declares {member.size} bytes, "
                            f"over data.max_sample_bytes={max_bytes}; not read"
                        )
                    _stream_past(tar, member)
                elif keep and oversized is None:  # skipped samples are streamed past, never read
                    current[ext] = tar.extractfile(member).read(max_bytes)
            if current is not None and keep:
                yield _finished(current, oversized)
                yielded += 1
        total = None if last_stop is None else sum(b - a for a, b in runs)
        if total is None and yielded == 0:  # resampled epochs: an empty shard must not spin forever
            log.warning("shard %s holds no samples; counted as one bad sample", url)
            yield BadSample(url, f"shard {url} holds no samples")
        if total is not None and yielded < total:
            reason = f"shard {url} has {index + 1} samples, fewer than the {last_stop} planned"
            log.warning("%s; the missing ones count as bad samples", reason)
            yield from _missing_samples(url, runs, yielded, reason)
    except (OSError, EOFError, tarfile.TarError, ValueError) as e:
        reason = f"shard {url} unreadable after {yielded} samples: {type(e).__name__}: {e}"
        log.warning("%s; the rest of this shard counts as bad samples", reason)
        yield from _missing_samples(url, runs, yielded, reason)
    finally:
        if stream is not None:
            # A pipe: command cut short by our early close reports a failure status; not an error.
            with contextlib.suppress(Exception):
                stream.close()
