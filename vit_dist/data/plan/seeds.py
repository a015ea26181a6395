"""A stream's randomness: seeds derived from ``(seed, epoch, rank, worker, segment)`` and the
streaming shuffle buffer (see the package docstring). Pure Python, stable across processes."""

from __future__ import annotations

import random
from collections.abc import Iterator

_GOLDEN = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings; stable across processes and Python runs."""
    return random.Random("/".join(map(str, parts))).getrandbits(63)


def sample_seed(stream_seed: int, position: int) -> int:
    """Seed of the sample at ``position`` of a stream (cheap: called once per sample)."""
    return (stream_seed + (position + 1) * _GOLDEN) & _MASK63


def stream_seed(kind: str, seed: int, epoch: int, rank: int, worker: int, segment: int = 0) -> int:
    """Seed of one stream's ``kind`` ("buffer", "augment", "resample") in a segment of an epoch;
    segment 0 (the whole of an epoch that was not re-planned) leaves the segment out."""
    if segment == 0:
        return derive_seed(kind, seed, epoch, rank, worker)
    return derive_seed(kind, seed, epoch, rank, worker, "segment", segment)


def shuffle_buffer(items: Iterator, size: int, rng: random.Random, held: list | None = None) -> Iterator:
    """Classic streaming shuffle: keep ``size`` items, emit a random one per item read.

    ``held``, when given, is the buffer itself: at any point it holds exactly the items read
    but not yet emitted, which is how :func:`epoch_positions` finds what a stream left unseen.
    """
    if size <= 1:
        yield from items
        return
    buf = held if held is not None else []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    buf.reverse()  # popping from the end emits the shuffled order and keeps only the unemitted
    while buf:
        yield buf.pop()
