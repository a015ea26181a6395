"""What an epoch plan costs, for every stream of a job at once: samples, batches, padding, bytes.

The loader plans one rank's streams (``exact_plan``); a planner that sizes a whole job needs all
``R*W`` of them, and calling ``exact_plan`` once per rank repeats the per-rank set-up ``R``
times. ``plan.all_stream_plans`` asks ``plan.stream_plans``, the code behind ``exact_plan``, for
every stream at once: the same checks, errors and arithmetic, the set-up done once.

Cost model of the bytes a stream reads (:class:`SplitBytes`). A stream reads its slices of a
shard in one pass (``pipeline.ShardStream``: consecutive slices of one shard are one group):

* with an index (``<shard>.idx``, ``index.py``) it seeks to each slice and reads exactly its
  samples: ``offsets[stop] - offsets[start]`` per slice;
* without one it streams through the shard from its first byte to the end of its last slice
  (``offsets[stop]``), or to the end of the file when that slice ends the shard.

Offsets come from the ``.idx`` files when there are any; otherwise sample sizes are taken as
uniform within a shard (``offsets[i] = i * num_bytes // num_samples``), and where a shard's
size in bytes is unknown, "bytes" are samples. The read amplification is the bytes read over
the bytes of the split (the sum of its shard files); 1 means every byte is read once.

Resampled epochs (:func:`resampled_figures`) draw shards per stream with the loader's own RNG
(``plan.resampled_shards``) and read each drawn shard whole from the loader's random start
(``plan.resampled_start``), wrapping round, until the stream has read the samples it emits plus
what its shuffle buffer holds at the end (the loader caps a resampled stream's buffer at what it
emits): seeking to the start with an index, streaming through to it without one.

Nothing here opens a shard: the inputs are ``dataset.json``'s counts and sizes and the index
files' offsets.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...core.errors import DataError
from ..index import read_index
from ..meta import META_NAME, read_meta
from ..spec import index_file
from . import (
    Segment,
    all_stream_plans,
    planned_stop,
    resampled_batches,
    resampled_shards,
    resampled_start,
    stream_seed,
)


@dataclass(frozen=True)
class SplitBytes:
    """Per-shard sizes of a split: sample counts, file sizes (None: unknown) and index offsets
    (``offsets[i]``: None where the shard has no usable index; ``unusable``: why an index that
    exists cannot be used, per shard name, as the loader would find)."""

    sizes: list[int]
    num_bytes: list[int] | None = None
    offsets: Sequence[Sequence[int] | None] | None = None
    unusable: dict[str, str] = field(default_factory=dict)

    @property
    def bytes_known(self) -> bool:
        return self.num_bytes is not None or (
            self.offsets is not None and all(o is not None for o in self.offsets)
        )

    def has_index(self, shard: int) -> bool:
        return self.offsets is not None and self.offsets[shard] is not None

    def indexed(self) -> int:
        """How many shards have an index."""
        return sum(self.has_index(i) for i in range(len(self.sizes)))

    def seeks(self, shard: int, index: str) -> bool:
        """Whether a stream seeks in ``shard`` under the cost model ``index`` (:data:`INDEX_MODES`):
        "auto" where it has an index (what the loader does), "assume" always, "none" never."""
        return index == "assume" or (index == "auto" and self.has_index(shard))

    def offset(self, shard: int, i: int) -> int:
        """Byte offset of sample ``i`` of ``shard`` (``i = num_samples``: the end of its samples)."""
        offsets = self.offsets[shard] if self.offsets is not None else None
        if offsets is not None:  # has_index(shard)
            return offsets[i]
        if self.num_bytes is None:
            return i  # unknown sizes: a sample is one unit
        n = self.sizes[shard]
        return i * self.num_bytes[shard] // n if n else 0

    def file_bytes(self, shard: int) -> int:
        """The whole shard file: what streaming it to its end reads."""
        if self.num_bytes is not None:
            return self.num_bytes[shard]
        return self.offset(shard, self.sizes[shard])

    def total(self) -> int:
        return sum(self.file_bytes(i) for i in range(len(self.sizes)))

    def read_cost(self, shard: int, runs: list[tuple[int, int]]) -> tuple[int, int]:
        """Bytes one pass over ``shard`` reading the sample ``runs`` costs: (seeking with an
        index, streaming from the shard's start)."""
        seek = sum(self.offset(shard, b) - self.offset(shard, a) for a, b in runs)
        last = runs[-1][1]
        stream = self.file_bytes(shard) if last >= self.sizes[shard] else self.offset(shard, last)
        return seek, stream


def split_from_meta(directory: str | os.PathLike, split: str, *, indexes: bool = True) -> SplitBytes:
    """The split ``split`` of the shard directory ``directory`` from its ``dataset.json`` and,
    with ``indexes``, the shards' byte-offset indexes, found as the loader finds them (the
    entry's ``"index"``, else the sidecar ``<shard>.idx``) and checked against the counts and
    sizes that ``dataset.json`` records. An index the loader would refuse (stale, malformed) is
    left out, as the loader streams that shard through, and noted in ``unusable``. The shards
    themselves are never opened."""
    meta = read_meta(directory)
    if split not in meta["splits"]:
        raise DataError(
            f"{Path(directory) / META_NAME} has no split {split!r} (it has: {', '.join(sorted(meta['splits']))})"
        )
    shards = meta["splits"][split].get("shards") if isinstance(meta["splits"][split], dict) else None
    if not shards or not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in shards):
        raise DataError(
            f"split {split!r} of {Path(directory) / META_NAME} lists no shards (or entries without a name)"
        )
    sizes = [s["num_samples"] for s in shards]  # whole numbers >= 0: read_meta checked them
    sized = all(isinstance(s.get("num_bytes"), int) and s["num_bytes"] >= 0 for s in shards)
    num_bytes = [s["num_bytes"] for s in shards] if sized else None
    if not indexes:
        return SplitBytes(sizes, num_bytes)
    offsets: list = []
    unusable: dict[str, str] = {}
    for i, s in enumerate(shards):
        path = _index_path(directory, s)
        if path is None:
            offsets.append(None)
            continue
        try:
            offsets.append(
                read_index(
                    path, num_samples=sizes[i], shard_bytes=num_bytes[i] if num_bytes is not None else None
                )
            )
        except DataError as e:
            offsets.append(None)
            unusable[s["name"]] = str(e)
    return SplitBytes(sizes, num_bytes, offsets, unusable)


def _index_path(directory: str | os.PathLike, entry: dict) -> str | None:
    """The index of one ``dataset.json`` shard entry, found as the loader finds it."""
    path = os.path.join(os.path.abspath(directory), entry["name"])
    return index_file(path, entry.get("index"), directory)


def uniform_split(samples: int, shards: int, total_bytes: int | None = None) -> SplitBytes:
    """A simulated split: ``samples`` spread over ``shards`` as evenly as possible (counts differ
    by at most one), ``total_bytes`` over the shards in proportion to their samples."""
    if shards < 1 or samples < 0:
        raise DataError(f"a simulated split needs >= 1 shard and >= 0 samples, got {samples}:{shards}")
    sizes = [samples // shards + (i < samples % shards) for i in range(shards)]
    if total_bytes is None:
        return SplitBytes(sizes)
    cum = [0, *itertools.accumulate(sizes)]
    if samples == 0:
        nb = [total_bytes * (i + 1) // shards - total_bytes * i // shards for i in range(shards)]
    else:
        nb = [total_bytes * cum[i + 1] // samples - total_bytes * cum[i] // samples for i in range(shards)]
    return SplitBytes(sizes, nb)


@dataclass
class ExactFigures:
    """The figures of an exact epoch (or of the rest of one, re-planned) for a whole job.

    ``read_amplification`` follows the cost model in use (``index``): "auto" seeks in the
    shards that have an index and streams through the others (what the loader does), "none"
    streams through every shard, "assume" seeks in every shard (offsets estimated where there is
    no index); ``read_amplification_index`` and ``..._no_index`` are always both given."""

    streams: int
    ranks: int
    workers: int
    batch_size: int
    samples: int  # samples the plan covers (the rest of the epoch when re-planned)
    split_samples: int
    samples_per_stream_min: int
    samples_per_stream_max: int
    batches_per_rank: int
    padded_samples: int
    shards: int
    shards_indexed: int
    streams_per_shard_max: int  # how many streams read (part of) one shard
    shards_per_stream_max: int
    bytes_known: bool  # False: "bytes" are samples (no sizes in dataset.json, no index)
    index: str
    split_bytes: int
    bytes_per_stream_min: int
    bytes_per_stream_max: int
    bytes_read: int
    read_amplification: float
    read_amplification_index: float
    read_amplification_no_index: float
    plan_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


INDEX_MODES = ("auto", "none", "assume")


def _check_index_mode(index: str) -> None:
    if index not in INDEX_MODES:
        raise DataError(f"index must be one of {', '.join(INDEX_MODES)}, got {index!r}")


def exact_figures(
    split: SplitBytes,
    *,
    seed: int = 0,
    epoch: int = 0,
    world_size: int,
    num_workers: int,
    batch_size: int,
    shuffle: bool,
    history: tuple[Segment, ...] = (),
    index: str = "auto",
) -> ExactFigures:
    """Plan every stream (``plan.all_stream_plans``) and add up what it reads, by the cost model
    named by ``index`` (one of :data:`INDEX_MODES`; see :class:`ExactFigures`)."""
    _check_index_mode(index)
    t0 = time.perf_counter()
    workers = max(1, num_workers)
    plans = all_stream_plans(
        split.sizes,
        seed=seed,
        epoch=epoch,
        world_size=world_size,
        num_workers=workers,
        batch_size=batch_size,
        shuffle=shuffle,
        history=history,
    )
    readers = [0] * len(split.sizes)
    used, seek_all, stream_all = [], 0, 0
    shards_per_stream = 0
    for p in plans:
        b_used = 0
        groups = 0
        for shard, group in itertools.groupby(p.slices, key=lambda s: s.shard):
            seek, stream = split.read_cost(shard, [(s.start, planned_stop(s)) for s in group])
            seek_all += seek
            stream_all += stream
            b_used += seek if split.seeks(shard, index) else stream
            readers[shard] += 1
            groups += 1
        used.append(b_used)
        shards_per_stream = max(shards_per_stream, groups)
    total = split.total()
    ratio = (lambda b: b / total) if total else (lambda b: 0.0)
    counts = [p.num_samples for p in plans]
    k = plans[0].num_batches
    return ExactFigures(
        streams=len(plans),
        ranks=world_size,
        workers=workers,
        batch_size=batch_size,
        samples=sum(counts),
        split_samples=sum(split.sizes),
        samples_per_stream_min=min(counts),
        samples_per_stream_max=max(counts),
        batches_per_rank=workers * k,
        padded_samples=len(plans) * k * batch_size - sum(counts),
        shards=len(split.sizes),
        shards_indexed=split.indexed(),
        streams_per_shard_max=max(readers),
        shards_per_stream_max=shards_per_stream,
        bytes_known=split.bytes_known,
        index=index,
        split_bytes=total,
        bytes_per_stream_min=min(used),
        bytes_per_stream_max=max(used),
        bytes_read=sum(used),
        read_amplification=ratio(sum(used)),
        read_amplification_index=ratio(seek_all),
        read_amplification_no_index=ratio(stream_all),
        plan_seconds=time.perf_counter() - t0,
    )


def _covered(runs: list[tuple[int, int]]) -> int:
    """Samples in the union of ``runs``."""
    total, end = 0, 0
    for a, b in sorted(runs):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _draws(sizes: list[int], seed: int, epoch: int, segment: int, world_size: int, workers: int):
    """``(rank, worker) -> endless shard draws``, the draws of ``plan.resampled_shards`` (same
    RNG, seed and weights) without its per-call check and cumulative sums over all shards,
    which at 32,768 streams of 1,420 shards would be most of the work. Checked against
    ``resampled_shards`` for the first and the last stream (a drift is a bug, raised as such)."""
    cum, n = list(itertools.accumulate(sizes)), len(sizes)

    def picks(rank: int, worker: int):
        rng = random.Random(stream_seed("resample", seed, epoch, rank, worker, segment))
        while True:
            yield rng.choices(range(n), cum_weights=cum)[0]

    for rank, worker in {(0, 0), (world_size - 1, workers - 1)}:
        theirs = resampled_shards(n, seed, epoch, rank, worker, sizes, segment)
        if list(itertools.islice(picks(rank, worker), 8)) != list(itertools.islice(theirs, 8)):
            raise AssertionError("simulate._draws differs from plan.resampled_shards: a bug, report it")
    return picks


@dataclass
class ResampledFigures:
    """The figures of a resampled epoch for a whole job, with the loader's own shard draws."""

    streams: int
    ranks: int
    workers: int
    batch_size: int
    samples_per_epoch: int
    split_samples: int
    batches_per_rank: int
    batches_per_worker_min: int
    batches_per_worker_max: int
    samples_emitted: int  # batches x batch size over all ranks (>= samples_per_epoch)
    samples_read: int  # emitted plus what the shuffle buffers hold when the epoch ends
    shards_drawn_per_stream_min: int
    shards_drawn_per_stream_max: int
    shards_drawn: int
    shards: int
    shards_never_drawn: int
    expected_repeats: float  # emitted / split samples: mean times a sample is used per epoch
    coverage: float  # fraction of the split's samples read at least once in this epoch
    bytes_known: bool
    split_bytes: int
    bytes_per_stream_min: int
    bytes_per_stream_max: int
    bytes_read: int
    read_amplification: float
    read_amplification_index: float  # seeking to each random start in every shard
    read_amplification_no_index: float  # streaming through to it in every shard
    padded_samples: int
    plan_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def resampled_figures(
    split: SplitBytes,
    *,
    seed: int = 0,
    epoch: int = 0,
    world_size: int,
    num_workers: int,
    batch_size: int,
    samples_per_epoch: int,
    shuffle_buffer: int,
    history: tuple[Segment, ...] = (),
    index: str = "auto",
) -> ResampledFigures:
    """Draw every stream's shards as the loader does and add up what they read, seeking or
    streaming through as ``index`` says (one of :data:`INDEX_MODES`, as for exact epochs)."""
    _check_index_mode(index)
    t0 = time.perf_counter()
    sizes, workers = split.sizes, max(1, num_workers)
    if sum(sizes) <= 0:
        raise DataError("the shards hold no samples")
    per_worker = resampled_batches(samples_per_epoch, world_size, workers, batch_size, history)
    buffer = shuffle_buffer if shuffle_buffer > 1 else 0  # shuffle_buffer() passes items through at <= 1
    covered: list[list[tuple[int, int]]] = [[] for _ in sizes]  # the sample runs read, per shard
    draws, used, read, seek_all, stream_all = [], [], 0, 0, 0
    picks_of = _draws(sizes, seed, epoch, len(history), world_size, workers)
    for rank in range(world_size):
        for w in range(workers):
            emit = per_worker[w] * batch_size
            need = emit + min(buffer, emit)  # the loader's buffer holds at most what the stream emits
            picks = picks_of(rank, w)
            starts = random.Random(stream_seed("start", seed, epoch, rank, w, len(history)))
            got = drawn = cost = 0
            while got < need:
                shard = next(picks)
                n = sizes[shard]
                k = resampled_start(starts, n)
                take = min(n, need - got)
                drawn += 1
                got += max(take, 1)  # an empty shard still yields one (bad) item
                runs = [(k, min(n, k + take))] + ([(0, k + take - n)] if k + take > n else [])
                for a, b in runs:
                    seek, stream = split.read_cost(shard, [(a, b)])
                    cost += seek if split.seeks(shard, index) else stream
                    seek_all, stream_all = seek_all + seek, stream_all + stream
                    covered[shard].append((a, b))
            draws.append(drawn)
            used.append(cost)
            read += got
    total = split.total()
    emitted = world_size * sum(per_worker) * batch_size
    n = sum(sizes)
    return ResampledFigures(
        streams=world_size * workers,
        ranks=world_size,
        workers=workers,
        batch_size=batch_size,
        samples_per_epoch=samples_per_epoch,
        split_samples=n,
        batches_per_rank=sum(per_worker),
        batches_per_worker_min=min(per_worker),
        batches_per_worker_max=max(per_worker),
        samples_emitted=emitted,
        samples_read=read,
        shards_drawn_per_stream_min=min(draws),
        shards_drawn_per_stream_max=max(draws),
        shards_drawn=sum(draws),
        shards=len(sizes),
        shards_never_drawn=sum(1 for c, s in zip(covered, sizes) if not c and s > 0),
        expected_repeats=emitted / n,
        coverage=sum(_covered(runs) for runs in covered) / n,
        bytes_known=split.bytes_known,
        split_bytes=total,
        bytes_per_stream_min=min(used),
        bytes_per_stream_max=max(used),
        bytes_read=sum(used),
        read_amplification=sum(used) / total if total else 0.0,
        read_amplification_index=seek_all / total if total else 0.0,
        read_amplification_no_index=stream_all / total if total else 0.0,
        padded_samples=0,  # resampled batches are always full
        plan_seconds=time.perf_counter() - t0,
    )
