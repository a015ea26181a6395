"""Exact epochs: every sample once per epoch, each (rank, worker) stream its contiguous
stretch of the shuffled shard sequence, equal batch counts, and the re-planning of an
interrupted epoch for other settings (see the package docstring)."""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from ...core.errors import DataError
from ..counts import check_sizes
from .seeds import derive_seed, shuffle_buffer, stream_seed


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


@dataclass(frozen=True)
class Segment:
    """A finished part of an interrupted epoch: the settings it ran with, and the batches each
    rank consumed (equal on every rank)."""

    world_size: int
    num_streams: int  # loader workers per rank (1 when loading in the main process)
    batch_size: int
    shuffle_buffer: int
    batches: int


Intervals = tuple[tuple[int, int], ...]  # sorted, disjoint [start, stop) sample positions


def shard_order(num_shards: int, seed: int, epoch: int, *, shuffle: bool) -> list[int]:
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
    history: tuple[Segment, ...] = (),
) -> list[StreamPlan]:
    """The streams of ``rank`` (one per worker) for an exact epoch, or for what is left of it
    after the segments in ``history``; see the module docstring."""
    return stream_plans(
        sizes,
        seed=seed,
        epoch=epoch,
        world_size=world_size,
        num_workers=num_workers,
        batch_size=batch_size,
        shuffle=shuffle,
        history=history,
        which=range(rank * num_workers, (rank + 1) * num_workers),
    )


def stream_plans(
    sizes: list[int],
    *,
    seed: int,
    epoch: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    shuffle: bool,
    history: tuple[Segment, ...] = (),
    which: range,
) -> list[StreamPlan]:
    """The plans of streams ``which`` (stream ``rank * num_workers + worker``) of an exact
    epoch: one rank's for the loader (:func:`exact_plan`), every stream's for the planner."""
    check_sizes(sizes)  # a negative or fractional count would cut the epoch wrongly, silently
    streams = world_size * num_workers
    total = sum(sizes)
    if total == 0:
        raise DataError("the shards hold no samples")
    order = shard_order(len(sizes), seed, epoch, shuffle=shuffle)
    starts = [0]  # offset of each shard (in shuffled order) in the virtual sequence
    for i in order:
        starts.append(starts[-1] + sizes[i])
    left = epoch_positions(total, seed, epoch, shuffle=shuffle, history=history)
    n, ends = _count(left), _ends(left)
    if history and n < streams:  # the tail of an epoch: fewer samples than streams
        return [StreamPlan((), 0, 0) for _ in which]
    if shuffle and n < streams:  # training: a stream without a sample would train on blanks
        raise DataError(
            f"{n} samples cannot give each of {world_size} ranks x {num_workers} loader workers = {streams} "
            f"streams a sample in an exact training epoch: use fewer loader workers (data.workers) or more data"
        )
    num_batches = math.ceil(math.ceil(n / streams) / batch_size)
    plans = []
    for s in which:
        lo, hi = s * n // streams, (s + 1) * n // streams
        slices = tuple(_slices(_cut(left, ends, lo, hi), order, starts))
        plans.append(StreamPlan(slices, hi - lo, num_batches))
    return plans


def _count(iv: Intervals) -> int:
    return sum(b - a for a, b in iv)


def _ends(iv: Intervals) -> list[int]:
    """Running counts of ``iv``: the argument :func:`_cut` needs (computed once per list)."""
    return list(itertools.accumulate(b - a for a, b in iv))


def _cut(iv: Intervals, ends: list[int], lo: int, hi: int) -> Intervals:
    """The ``lo``-th to ``hi``-th positions (by rank, not value) of ``iv``, as intervals."""
    out = []
    k = bisect.bisect_right(ends, lo)
    while k < len(iv) and lo < hi:
        a, b = iv[k]
        first = ends[k] - (b - a)  # rank of a
        take_a = a + (lo - first)
        take_b = min(b, a + (hi - first))
        if take_a < take_b:
            out.append((take_a, take_b))
        lo = first + (take_b - a)
        k += 1
    return tuple(out)


def _merge(parts: list[tuple[int, int]]) -> Intervals:
    out: list[tuple[int, int]] = []
    for a, b in sorted(parts):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


def _slices(iv: Intervals, order: list[int], starts: list[int]) -> Iterator[Slice]:
    """Virtual-sequence intervals as per-shard slices (split where a shard ends)."""
    for a, b in iv:
        while a < b:
            pos = bisect.bisect_right(starts, a) - 1  # the shard (in shuffled order) holding a
            stop = min(b, starts[pos + 1])
            yield Slice(order[pos], a - starts[pos], stop - starts[pos])
            a = stop


def _unseen(iv: Intervals, consumed: int, buffer: int, rng: random.Random) -> list[tuple[int, int]]:
    """What a stream reading ``iv`` through a shuffle buffer has not emitted after
    ``consumed`` items: its buffer's contents and the unread rest."""
    n = _count(iv)
    if consumed >= n:
        return []
    ends = _ends(iv)
    if buffer <= 1:
        return list(_cut(iv, ends, consumed, n))
    reads = 0

    def positions() -> Iterator[int]:
        nonlocal reads
        for a, b in iv:
            for p in range(a, b):
                reads += 1
                yield p

    held: list[int] = []
    emitted = shuffle_buffer(positions(), buffer, rng, held=held)
    for _ in itertools.islice(emitted, consumed):
        pass
    return [(p, p + 1) for p in held] + list(_cut(iv, ends, reads, n))


@functools.lru_cache(maxsize=4)
def epoch_positions(
    total: int, seed: int, epoch: int, *, shuffle: bool, history: tuple[Segment, ...]
) -> Intervals:
    """The virtual-sequence positions an epoch has left after the segments in ``history``."""
    left: Intervals = ((0, total),)
    for k, seg in enumerate(history):
        n, streams = _count(left), seg.world_size * seg.num_streams
        if n < streams:  # that segment already ended the epoch (see exact_plan)
            return ()
        per_worker = [math.ceil(math.ceil(n / streams) / seg.batch_size)] * seg.num_streams
        done, _ = consumed_per_worker(seg.batches, per_worker)
        ends = _ends(left)
        parts: list[tuple[int, int]] = []
        for r in range(seg.world_size):
            for w in range(seg.num_streams):
                s = r * seg.num_streams + w
                lo, hi = s * n // streams, (s + 1) * n // streams
                rng = random.Random(stream_seed("buffer", seed, epoch, r, w, k))
                buffer = seg.shuffle_buffer if shuffle else 0
                parts += _unseen(_cut(left, ends, lo, hi), done[w] * seg.batch_size, buffer, rng)
        left = _merge(parts)
    return left


def plan_left(sizes: list[int], seed: int, epoch: int, shuffle: bool, history: tuple[Segment, ...]) -> int:
    """Samples an exact epoch has left after the segments in ``history``."""
    return _count(epoch_positions(sum(sizes), seed, epoch, shuffle=shuffle, history=history))


def all_stream_plans(
    sizes: list[int],
    *,
    seed: int,
    epoch: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    shuffle: bool,
    history: tuple[Segment, ...] = (),
) -> list[StreamPlan]:
    """Every stream of an exact epoch (stream ``rank * num_workers + worker``), equal to
    ``exact_plan(..., rank=rank)[worker]`` for every rank; see the module docstring."""
    return stream_plans(
        sizes,
        seed=seed,
        epoch=epoch,
        world_size=world_size,
        num_workers=num_workers,
        batch_size=batch_size,
        shuffle=shuffle,
        history=history,
        which=range(world_size * num_workers),
    )


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


def planned_stop(s: Slice) -> int:
    """The stop of a slice of an epoch plan (planned slices always end at a known sample)."""
    if s.stop is None:
        raise ValueError(f"a planned slice has no stop: {s}")
    return s.stop


def read_amplification(
    plans: list[StreamPlan], seekable: list[bool], bytes_per_sample: list[float]
) -> tuple[float, float]:
    """``(bytes read, bytes of the split)`` when every stream of ``plans`` reads its slices: a
    shard in ``seekable`` (local, with a usable index) costs exactly its slices' bytes, any
    other is read in one pass from its start to its last planned sample (``tar_reader``).
    ``bytes_per_sample[s]``: shard ``s``'s mean sample size (any constant when unknown)."""
    read = split = 0.0
    for plan in plans:
        for shard, grouped in itertools.groupby(plan.slices, key=lambda s: s.shard):
            group = list(grouped)
            stops = [planned_stop(s) for s in group]
            samples = sum(stop - s.start for s, stop in zip(group, stops))
            split += samples * bytes_per_sample[shard]
            read += (samples if seekable[shard] else stops[-1]) * bytes_per_sample[shard]
    return read, split
