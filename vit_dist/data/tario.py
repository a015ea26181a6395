"""Tar shard -> raw samples, robust to truncated or unreadable shards.

A sample is the group of consecutive tar members sharing a key (webdataset convention:
``dir/key.ext``, the key ends at the first dot of the base name); it is returned as a dict
``{"__key__", "__url__", ext: bytes, ...}`` with the bytes left encoded.

Reading a *slice* ``[start, stop)`` streams through the first ``start`` samples without keeping
their bytes (tar is sequential; this also works through ``pipe:`` URLs) and stops reading after
``stop``. The promise to the planner is exact: a slice with a known ``stop`` yields exactly
``stop - start`` items. When the shard cannot be opened, is truncated, or holds fewer samples
than ``dataset.json`` says, the missing samples are yielded as :class:`Bad` placeholders
(counted downstream as ``bad_samples``) so batch counts, and with them the collectives of
every rank, stay in step. One warning is logged per failing shard.
"""

from __future__ import annotations

import contextlib
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from webdataset.gopen import gopen

log = logging.getLogger("vit_dist.data")


@dataclass(frozen=True)
class Bad:
    """A sample that could not be produced; ``reason`` ends up in the log."""

    key: str
    reason: str


def _split_name(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def read_slice(url: str, start: int = 0, stop: int | None = None) -> Iterator[dict | Bad]:
    """Samples ``[start, stop)`` of the shard at ``url`` (see the module docstring)."""
    index = -1  # index of the sample being assembled
    current: dict | None = None
    yielded = 0
    stream = None
    try:
        stream = gopen(url, "rb")
        with tarfile.open(fileobj=stream, mode="r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                if current is None or key != current["__key__"]:
                    if current is not None and index >= start:
                        yield current
                        yielded += 1
                    index += 1
                    if stop is not None and index >= stop:
                        current = None
                        break
                    current = {"__key__": key, "__url__": url}
                if index >= start:  # skipped samples are streamed past, never read into memory
                    current[ext] = tf.extractfile(member).read()
            if current is not None and index >= start and (stop is None or index < stop):
                yield current
                yielded += 1
        if stop is None and yielded == 0:  # resampled epochs: an empty shard must not spin forever
            log.warning("shard %s holds no samples; counted as one bad sample", url)
            yield Bad(url, f"shard {url} holds no samples")
        if stop is not None and yielded < stop - start:
            reason = f"shard {url} has {start + yielded} samples, fewer than the {stop} planned"
            log.warning("%s; the missing ones count as bad samples", reason)
            yield from (Bad(f"{url}#{start + yielded + i}", reason) for i in range(stop - start - yielded))
    except (OSError, EOFError, tarfile.TarError, ValueError) as e:
        reason = f"shard {url} unreadable after {yielded} samples: {type(e).__name__}: {e}"
        log.warning("%s; the rest of this shard counts as bad samples", reason)
        missing = (stop - start - yielded) if stop is not None else 1
        yield from (Bad(f"{url}#{start + yielded + i}", reason) for i in range(missing))
    finally:
        if stream is not None:
            # A pipe: command cut short by our early close reports a failure status; not an error.
            with contextlib.suppress(Exception):
                stream.close()
