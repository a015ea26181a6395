"""Tar shard -> raw samples, robust to truncated or unreadable shards.

A sample is the group of consecutive tar members sharing a key (webdataset convention:
``dir/key.ext``, the key ends at the first dot of the base name); it is returned as a dict
``{"__key__", "__url__", ext: bytes, ...}`` with the bytes left encoded.

Reading a *slice* ``[start, stop)`` of a local shard with a byte-offset index (``index.py``)
seeks straight to sample ``start`` and reads only up to the end of sample ``stop - 1``; an
``http(s)://`` shard with an index (from the ``data.meta`` directory) is read the same way by
HTTP Range requests, checked against the size the index was built for. Without
an index (or through a ``pipe:`` URL, which cannot seek) it streams through the first ``start``
samples without keeping their bytes and stops reading after ``stop``. The promise to the planner is exact: a slice with a known ``stop`` yields exactly
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
import functools
import itertools
import logging
import os
import tarfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

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


def split_name(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def read_slice(
    url: str, start: int = 0, stop: int | None = None, max_bytes: int = DEFAULT_MAX_SAMPLE_BYTES
) -> Iterator[dict | BadSample]:
    """Samples ``[start, stop)`` of the shard at ``url`` (see the module docstring)."""
    return read_runs(url, [(start, stop)], max_bytes=max_bytes)


def member_data(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    """The data of the regular-file member ``member`` of ``tar``, as a file to read."""
    f = tar.extractfile(member)
    if f is None:  # tarfile gives no file for a directory or device: callers pass isfile() members
        raise tarfile.ReadError(f"member {member.name} is not a regular file")
    return f


def _closed_runs(runs: list[tuple[int, int | None]]) -> list[tuple[int, int]] | None:
    """``runs`` when its last run has a stop, which then every run has (only the last may be open:
    :func:`read_runs`); None when the last run reads to the end of the shard."""
    if runs[-1][1] is None:
        return None
    return cast("list[tuple[int, int]]", runs)  # the invariant above, which the types cannot carry


def _missing_samples(
    url: str, runs: list[tuple[int, int | None]], delivered: int, reason: str
) -> Iterator[BadSample]:
    """Placeholders for the wanted samples after the first ``delivered`` (a resampled read, whose
    last run has no end, has exactly one: the rest of an unknown-length shard)."""
    closed = _closed_runs(runs)
    if closed is None:
        yield BadSample(f"{url}#{runs[-1][0]}", reason)
        return
    wanted = itertools.chain.from_iterable(range(a, b) for a, b in closed)
    for i in itertools.islice(wanted, delivered, None):
        yield BadSample(f"{url}#{i}", reason)


def _stream_past(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Read through ``member``'s data a chunk at a time, keeping none of it. tarfile would skip
    it by reading the same bytes, but one block per call and without stopping at the end of
    the stream, which a header declaring terabytes turns into a near-endless loop; here a
    header that lies ends in ``tarfile.ReadError`` at the end of the data."""
    f = member_data(tar, member)
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


class _Window:
    """The bytes ``[lo, hi)`` of an open file, as a file to read from: a seeked, bounded pass."""

    def __init__(self, fh, lo: int, hi: int):
        fh.seek(lo)
        self.fh, self.left = fh, hi - lo

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.left:
            size = self.left
        data = self.fh.read(size)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.fh.close()


def is_http(url: str) -> bool:
    """Whether ``url`` is an http(s) URL, which can be read by byte ranges."""
    return url[:8].lower().startswith(("http://", "https://"))


def _open_local(path: str):
    """A local shard, opened as a plain file (one place, so tests can count what is read)."""
    return open(path, "rb")


def read_runs(
    url: str,
    runs: list[tuple[int, int | None]],
    max_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    count: int | None = None,
    offsets=None,
    shard_bytes: int | None = None,
) -> Iterator[dict | BadSample]:
    """The samples of the shard at ``url`` whose indices fall in ``runs``.

    ``runs`` are sorted, disjoint ``(start, stop)`` index ranges; only the last may have
    ``stop=None`` (to the end of the shard). With ``offsets`` (the shard's byte-offset index,
    checked against the shard by the caller: ``index.load_offsets``) each run is one seek and
    one bounded read of exactly its samples' bytes; for an http(s) shard one Range request,
    whose answer must cover a file of ``shard_bytes`` (the indexed size), else the shard is
    streamed from its start (one warning). Without, all runs are read in one pass and
    the samples between them are streamed past unread: a mid-epoch re-plan (``plan``) hands a
    stream scattered samples of a shard, which one pass reads in the time of one slice. A
    sample with a member over ``max_bytes`` is a :class:`BadSample` (see the module docstring).
    ``count``: the samples ``dataset.json`` says the shard holds; a shard that goes on past it
    is warned about (its extra samples are never read, so they must not go unnoticed).
    """
    runs = list(runs)
    streamed = (lambda: _open_local(url)) if os.path.isabs(url) else (lambda: gopen(url, "rb"))
    if offsets is None or not (os.path.isabs(url) or is_http(url)):  # pipe: and co. cannot seek
        yield from _read_pass(url, streamed, runs, 0, max_bytes, count)
        return
    n = len(offsets) - 1
    for k, (a, b) in enumerate(runs):
        lo, hi = offsets[min(a, n)], offsets[n if b is None else min(b, n)]
        opener: Callable[..., Any]  # called with no arguments
        if os.path.isabs(url):
            opener = lambda lo=lo, hi=hi: _Window(_open_local(url), lo, hi)
        else:
            try:
                response = _open_range(url, lo, hi, shard_bytes)
            except _NoRange as e:  # the server sends the whole file, or another one: stream it
                if url not in _no_range:
                    _no_range.add(url)
                    log.warning("%s; reading it from its start instead", e)
                yield from _read_pass(url, streamed, runs[k:], 0, max_bytes, count)
                return
            except OSError as e:  # no answer: raised inside the pass, its samples count as bad
                opener = functools.partial(_raise, e)
            else:
                opener = lambda r=response: r
        yield from _read_pass(url, opener, [(a, b)], min(a, n), max_bytes, None)


class _NoRange(Exception):
    """An http(s) server that did not answer a byte range with exactly that range of the shard
    the index was built for."""


_no_range: set[str] = set()  # shards reported as not readable by range, in this process
HTTP_TIMEOUT_S = 60.0  # a stalled server is caught sooner by the loader's worker_timeout


def _raise(error: BaseException):
    raise error


def _open_range(url: str, lo: int, hi: int, shard_bytes: int | None):
    """The bytes ``[lo, hi)`` of the http(s) shard ``url`` (an HTTP Range request). The answer
    must be 206 with a Content-Range over a file of ``shard_bytes`` (what the index was built
    for), else :class:`_NoRange`."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={lo}-{hi - 1}"})
    response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)  # an http(s) URL: see read_runs
    span = response.headers.get("Content-Range", "")
    expected = f"bytes {lo}-{hi - 1}/{shard_bytes}"
    if response.status != 206 or span.replace(" ", "") != expected.replace(" ", ""):
        response.close()
        got = (
            f"{response.status} with Content-Range {span!r}" if span else f"{response.status} without a range"
        )
        raise _NoRange(
            f"shard {url} answered a byte-range request with {got}, not {expected!r} (no range support, "
            f"or the shard changed since it was indexed)"
        )
    return response


def _read_pass(
    url: str,
    opener,
    runs: list[tuple[int, int | None]],
    first: int,
    max_bytes: int,
    count: int | None,
) -> Iterator[dict | BadSample]:
    """One sequential pass over the stream ``opener()`` returns, whose first sample is sample
    ``first`` of the shard, yielding the samples in ``runs`` (see :func:`read_runs`)."""
    last_stop = runs[-1][1]
    run = 0  # the first run that does not end before the sample being assembled

    def wanted(i: int) -> bool:
        nonlocal run
        while run < len(runs):
            stop = runs[run][1]
            if stop is None or stop > i:
                break
            run += 1
        return run < len(runs) and runs[run][0] <= i

    index = first - 1  # index of the sample being assembled
    current: dict | None = None
    oversized: str | None = None  # why the current sample is bad: a member over max_bytes
    keep = False
    yielded = 0
    stream = None
    try:
        # A local shard (spec.py makes each one an absolute path) is a plain file: its name is never
        # parsed as a URL or pipe: command. gopen is for the URLs a user typed.
        stream = opener()
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = split_name(member.name)
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
                    current[ext] = member_data(tar, member).read(max_bytes)
            if current is not None and keep:
                yield _finished(current, oversized)
                yielded += 1
        closed = _closed_runs(runs)
        total = None if closed is None else sum(b - a for a, b in closed)
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
