"""Resampled epochs: shards drawn with replacement, weighted by their sample counts, each read
from a random sample on; the epoch is cut at a fixed number of samples (see the package
docstring)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator

from ...core.errors import DataError
from ..counts import check_sizes
from .exact import Segment
from .seeds import stream_seed


def resampled_left(samples_per_epoch: int, history: tuple[Segment, ...]) -> int:
    """Samples a resampled epoch still draws after the segments in ``history``."""
    drawn = sum(seg.world_size * seg.batch_size * seg.batches for seg in history)
    return max(0, samples_per_epoch - drawn)


def resampled_batches(
    samples_per_epoch: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    history: tuple[Segment, ...] = (),
) -> list[int]:
    """Batches per worker of one rank in a resampled epoch (lower workers take the remainder),
    or in what is left of it after the segments in ``history``."""
    if samples_per_epoch <= 0:
        raise DataError(f"resampled epochs need samples_per_epoch > 0, got {samples_per_epoch}")
    per_rank = math.ceil(resampled_left(samples_per_epoch, history) / (world_size * batch_size))
    return [per_rank // num_workers + (w < per_rank % num_workers) for w in range(num_workers)]


def resampled_shards(
    num_shards: int,
    seed: int,
    epoch: int,
    rank: int,
    worker: int,
    sizes: list[int] | None = None,
    segment: int = 0,
) -> Iterator[int]:
    """Endless shard indices drawn with replacement for one stream.

    With known ``sizes`` a shard is drawn with probability proportional to its sample count,
    so every *sample* is equally likely (a half-full last shard is not over-sampled); with
    unknown sizes (remote shards without ``dataset.json``) the draw is uniform over shards.
    """
    rng = random.Random(stream_seed("resample", seed, epoch, rank, worker, segment))
    if sizes is not None and len(sizes) != num_shards:
        raise DataError(f"{len(sizes)} shard sizes for {num_shards} shards")
    if sizes is not None:
        check_sizes(sizes)  # negative weights would skew the draw silently
    if sizes is None or sum(sizes) <= 0:
        while True:
            yield rng.randrange(num_shards)
    cum = list(itertools.accumulate(sizes))
    while True:
        yield rng.choices(range(num_shards), cum_weights=cum)[0]


def resampled_start(rng: random.Random, num_samples: int | None) -> int:
    """Where a stream starts reading the shard it just drew: a uniform sample index drawn from
    its ``rng`` (``stream_seed("start", ...)``), or 0 for an empty shard or an unknown size."""
    return rng.randrange(num_samples) if num_samples else 0
