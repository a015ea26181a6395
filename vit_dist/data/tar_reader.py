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
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from webdataset.gopen import gopen

log = logging.getLogger("vit_dist.data")


@dataclass(frozen=True)
class BadSample:
    """A sample that could not be produced; ``reason`` ends up in the log."""

    key: str
    reason: str


def _split_name(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def read_slice(url: str, start: int = 0, stop: int | None = None) -> Iterator[dict | BadSample]:
    """Samples ``[start, stop)`` of the shard at ``url`` (see the module docstring)."""
    return read_runs(url, [(start, stop)])


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


def read_runs(url: str, runs: list[tuple[int, int | None]]) -> Iterator[dict | BadSample]:
    """The samples of the shard at ``url`` whose indices fall in ``runs``, in one pass.

    ``runs`` are sorted, disjoint ``(start, stop)`` index ranges; only the last may have
    ``stop=None`` (to the end of the shard). Samples between runs are streamed past unread. A
    mid-epoch re-plan (``plan.py``) hands a stream scattered samples of a shard, which one pass
    reads in the time of one slice.
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
    keep = False
    yielded = 0
    stream = None
    try:
        stream = gopen(url, "rb")
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                if current is None or key != current["__key__"]:
                    if current is not None and keep:
                        yield current
                        yielded += 1
                    index += 1
                    if last_stop is not None and index >= last_stop:
                        current = None
                        break
                    keep = wanted(index)
                    current = {"__key__": key, "__url__": url}
                if keep:  # skipped samples are streamed past, never read into memory
                    current[ext] = tar.extractfile(member).read()
            if current is not None and keep:
                yield current
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
