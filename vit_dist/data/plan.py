"""Who reads what, in which order: the deterministic epoch plan (pure Python, no I/O).

Every (rank, loader worker) pair is one *stream*. A stream's content is a pure function of
``(seed, epoch, rank, world_size, worker, num_workers, batch_size)``, which is what makes the
data position checkpointable: the position is just ``(epoch, batches consumed by this rank)``.

Exact epochs (every sample once per epoch across all ranks)
    1. The shard list is shuffled with a RNG seeded by ``(seed, epoch)``; every rank computes
       the same order.
    2. The shards, in that order, are read as one long virtual sequence of ``N`` samples, cut
       into ``R*W`` contiguous stretches whose lengths differ by at most one sample: rank ``r``
       gets stretches ``r*W .. r*W+W-1`` (so the ranks of a node read neighbouring shards and
       the split by node is the split by rank), worker ``w`` gets stretch ``r*W+w``. A
       stretch is a list of :class:`Slice` ``(shard, start, stop)``; at most its first and
       last shard are partial. A partial shard at the start of a stretch is read by
       streaming through its first ``start`` samples without decoding them, so the extra
       I/O is below one shard per stream.
    3. Every stream yields the same number of batches ``K = ceil(ceil(N/(R*W)) / B)``. A
       stream shorter than ``K*B`` samples pads its last batch with copies of its own samples
       marked ``valid=False`` (like ``DistributedSampler``'s padding, but masked), so every
       rank has exactly ``W*K`` batches and an epoch end can never leave one rank waiting in
       a collective. Evaluation ignores the masked entries, which gives exactly-once
       evaluation; training may use or mask them (they are < one batch per stream).
    Fewer shards than ``R*W`` streams is a start-up error: streams would share shards, and
    the plan is built to give each stream its own.

Resampled epochs (very large data)
    Each stream draws shards with replacement, weighted by their sample counts when those are
    known (uniformly otherwise), from a RNG seeded by ``(seed, epoch, rank, worker)`` and
    reads them whole, forever; the epoch is cut at
    ``ceil(samples_per_epoch / (R*B))`` batches per rank, spread over the workers.

Resuming
    ``DataLoader`` takes batches from its workers round-robin (worker 0, 1, ..., skipping
    exhausted ones), so batch ``j`` of a rank is a known batch of a known worker;
    :func:`consumed_per_worker` inverts that, and each worker skips exactly that many batches
    of its deterministic stream.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import DataError

_GOLDEN = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


@dataclass(frozen=True)
class Slice:
    """Samples ``[start, stop)`` of shard number ``shard`` (``stop=None``: to the end)."""

    shard: int
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class StreamPlan:
    """One (rank, worker) stream of an exact epoch: its slices and batch count."""

    slices: tuple[Slice, ...]
    num_samples: int
    num_batches: int


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings; stable across processes and Python runs."""
    return random.Random("/".join(map(str, parts))).getrandbits(63)


def sample_seed(stream_seed: int, position: int) -> int:
    """Seed of the sample at ``position`` of a stream (cheap: called once per sample)."""
    return (stream_seed + (position + 1) * _GOLDEN) & _MASK63


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    order = list(range(num_shards))
    if shuffle:
        random.Random(derive_seed("shards", seed, epoch)).shuffle(order)
    return order


def exact_plan(
    sizes: list[int],
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    shuffle: bool,
) -> list[StreamPlan]:
    """The streams of ``rank`` (one per worker) for an exact epoch; see the module docstring."""
    streams = world_size * num_workers
    if len(sizes) < streams:
        raise DataError(
            f"{len(sizes)} shards cannot feed {world_size} ranks x {num_workers} loader workers = {streams} "
            f"streams in exact mode: write more, smaller shards (--shard-samples) or use fewer workers"
        )
    total = sum(sizes)
    if total == 0:
        raise DataError("the shards hold no samples")
    order = shard_order(len(sizes), seed, epoch, shuffle)
    starts = [0]  # offset of each shard (in shuffled order) in the virtual sequence
    for i in order:
        starts.append(starts[-1] + sizes[i])
    per_stream_max = math.ceil(total / streams)
    num_batches = math.ceil(per_stream_max / batch_size)
    plans = []
    for w in range(num_workers):
        s = rank * num_workers + w
        lo, hi = s * total // streams, (s + 1) * total // streams
        slices = []
        for pos, shard in enumerate(order):
            a, b = max(lo, starts[pos]), min(hi, starts[pos + 1])
            if a < b:
                slices.append(Slice(shard, a - starts[pos], b - starts[pos]))
        plans.append(StreamPlan(tuple(slices), hi - lo, num_batches))
    return plans


def resampled_batches(
    samples_per_epoch: int, world_size: int, num_workers: int, batch_size: int
) -> list[int]:
    """Batches per worker of one rank in a resampled epoch (lower workers take the remainder)."""
    if samples_per_epoch <= 0:
        raise DataError(f"resampled epochs need samples_per_epoch > 0, got {samples_per_epoch}")
    per_rank = math.ceil(samples_per_epoch / (world_size * batch_size))
    return [per_rank // num_workers + (w < per_rank % num_workers) for w in range(num_workers)]


def resampled_shards(
    num_shards: int, seed: int, epoch: int, rank: int, worker: int, sizes: list[int] | None = None
) -> Iterator[int]:
    """Endless shard indices drawn with replacement for one stream.

    With known ``sizes`` a shard is drawn with probability proportional to its sample count,
    so every *sample* is equally likely (a half-full last shard is not over-sampled); with
    unknown sizes (remote shards without ``dataset.json``) the draw is uniform over shards.
    """
    rng = random.Random(derive_seed("resample", seed, epoch, rank, worker))
    if sizes is not None and len(sizes) != num_shards:
        raise DataError(f"{len(sizes)} shard sizes for {num_shards} shards")
    if sizes is None or sum(sizes) <= 0:
        while True:
            yield rng.randrange(num_shards)
    cum = list(itertools.accumulate(sizes))
    while True:
        yield rng.choices(range(num_shards), cum_weights=cum)[0]


def consumed_per_worker(start_batch: int, batches_per_worker: list[int]) -> tuple[list[int], int]:
    """Where each worker stands once the rank consumed ``start_batch`` batches.

    Mirrors ``DataLoader``'s in-order round-robin over workers that skips exhausted ones.
    Returns (batches each worker had delivered, the worker that delivers the next batch).
    A resumed ``DataLoader`` again starts its round-robin at its worker 0, so the loader maps
    its worker ``i`` to stream ``(next + i) % W``; the rest of a round-robin is a round-robin.
    """
    if not 0 <= start_batch <= sum(batches_per_worker):
        raise DataError(
            f"resume position {start_batch} is outside the epoch of {sum(batches_per_worker)} batches"
        )
    done = [0] * len(batches_per_worker)
    order = itertools.cycle(range(len(batches_per_worker)))
    left, nxt = start_batch, 0
    for w in order:
        if all(d >= n for d, n in zip(done, batches_per_worker)):
            break
        if done[w] >= batches_per_worker[w]:
            continue
        if not left:
            nxt = w
            break
        done[w] += 1
        left -= 1
    return done, nxt
