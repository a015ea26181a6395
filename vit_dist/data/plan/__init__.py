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
       last shard are partial. There may be any number of streams per shard: with fewer
       shards than streams, several streams read disjoint slices of one shard. A slice that
       starts inside a shard is reached by a seek when the shard has a byte-offset index
       (``index.py``), else by streaming through its first ``start`` samples without decoding
       them; the loader logs the resulting read amplification at start-up.
    3. Every stream yields the same number of batches ``K = ceil(ceil(N/(R*W)) / B)``. A
       stream shorter than ``K*B`` samples pads its last batch with copies of its own samples
       marked ``valid=False`` (like ``DistributedSampler``'s padding, but masked), so every
       rank has exactly ``W*K`` batches and an epoch end can never leave one rank waiting in
       a collective. Evaluation ignores the masked entries, which gives exactly-once
       evaluation; training may use or mask them (they are < one batch per stream).
    Fewer samples than streams (``N < R*W``) leaves some streams without a sample: their one
    batch is all padding, masked (blank images, ``valid=False``). Evaluation is still exactly
    once; a training epoch like that is a start-up error (it would train on blank images).

Resampled epochs (very large data)
    Each stream draws shards with replacement, weighted by their sample counts when those are
    known (uniformly otherwise), from a RNG seeded by ``(seed, epoch, rank, worker)`` and
    reads each whole, forever, starting at a random sample and wrapping round to the shard's
    start (:func:`resampled_start`); the epoch is cut at ``ceil(samples_per_epoch / (R*B))``
    batches per rank, spread over the workers. The random start matters at scale: a stream
    whose epoch is shorter than a shard would otherwise read only the first samples of every
    shard it draws, epoch after epoch (with an index the start is one seek).

Resuming
    ``DataLoader`` takes batches from its workers round-robin (worker 0, 1, ..., skipping
    exhausted ones), so batch ``j`` of a rank is a known batch of a known worker;
    :func:`consumed_per_worker` inverts that, and each worker skips exactly that many batches
    of its deterministic stream.

Re-planning an interrupted epoch (another world size, worker count, batch size or buffer)
    The part of the epoch run so far is a :class:`Segment`: its settings and the batches each
    rank consumed. Which samples those batches held is a pure function of the plan, so
    :func:`epoch_positions` replays it, shuffle buffers included (on sample indices, without
    reading a byte), and returns the samples not yet seen: each old stream's unread tail plus
    what its shuffle buffer still held. Those are split among the new streams exactly as a
    fresh epoch splits the whole sequence (contiguous stretches, sizes within one sample,
    equal batch counts), with seeds that also name the segment. So an epoch finished on
    another world size still sees every sample exactly once. If fewer samples are left than
    there are new streams, the epoch ends there (fewer than one per stream, logged).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from ...errors import DataError
from ..counts import check_sizes

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
