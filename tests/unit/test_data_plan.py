"""The epoch planner alone (no I/O): coverage, equal batch counts, determinism, resume arithmetic."""

from __future__ import annotations

import itertools
import random

import pytest

from vit_dist.core.errors import DataError
from vit_dist.data.plan import (
    Segment,
    consumed_per_worker,
    exact_plan,
    plan_left,
    resampled_batches,
    resampled_shards,
    shuffle_buffer,
    stream_seed,
)


def _samples(plans):
    return [(s.shard, i) for p in plans for s in p.slices for i in range(s.start, s.stop)]


@pytest.mark.parametrize(
    "sizes,world,workers,batch",
    [
        ([37, 5, 20, 13, 29, 1, 18], 2, 2, 8),
        ([100] * 5 + [57], 2, 2, 64),
        ([3, 1, 1, 9, 4, 4, 2, 2], 4, 2, 1),
    ],
)
def test_exact_plan_covers_every_sample_once_with_equal_batches(sizes, world, workers, batch):
    for epoch in range(3):
        plans = [
            exact_plan(
                sizes,
                seed=1,
                epoch=epoch,
                rank=r,
                world_size=world,
                num_workers=workers,
                batch_size=batch,
                shuffle=True,
            )
            for r in range(world)
        ]
        got = [x for rank_plans in plans for x in _samples(rank_plans)]
        assert sorted(got) == [(s, i) for s, n in enumerate(sizes) for i in range(n)]  # once each
        counts = {p.num_batches for rank_plans in plans for p in rank_plans}
        assert len(counts) == 1  # every stream, so every rank, yields the same number of batches
        lengths = [p.num_samples for rank_plans in plans for p in rank_plans]
        assert max(lengths) - min(lengths) <= 1
        assert counts.pop() * batch >= max(lengths)


def test_shard_order_depends_on_seed_and_epoch_only():
    kw = dict(rank=0, world_size=1, num_workers=1, batch_size=4, shuffle=True)
    sizes = [5] * 20
    order = lambda seed, epoch: [s.shard for s in exact_plan(sizes, seed=seed, epoch=epoch, **kw)[0].slices]
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == list(range(20))


@pytest.mark.parametrize(
    "sizes,world,workers", [([10, 10, 10], 2, 2), ([7, 5], 2, 3), ([50000 // 2] * 2, 8, 8)]
)
def test_fewer_shards_than_streams_split_the_shards_between_streams(sizes, world, workers):
    plans = [
        exact_plan(
            sizes, seed=0, epoch=1, rank=r, world_size=world, num_workers=workers, batch_size=4, shuffle=True
        )
        for r in range(world)
    ]
    got = [x for rank_plans in plans for x in _samples(rank_plans)]
    assert sorted(got) == [(s, i) for s, n in enumerate(sizes) for i in range(n)]  # once each
    assert len({p.num_batches for rank_plans in plans for p in rank_plans}) == 1
    lengths = [p.num_samples for rank_plans in plans for p in rank_plans]
    assert max(lengths) - min(lengths) <= 1 and min(lengths) > 0


def test_fewer_samples_than_streams_pads_evaluation_and_refuses_training():
    kw = dict(seed=0, epoch=0, world_size=2, num_workers=3, batch_size=4)
    plans = [p for r in range(2) for p in exact_plan([2, 1], rank=r, shuffle=False, **kw)]
    assert sorted(x for p in plans for x in _samples([p])) == [(0, 0), (0, 1), (1, 0)]
    assert {p.num_batches for p in plans} == {1} and sorted(p.num_samples for p in plans) == [
        0,
        0,
        0,
        1,
        1,
        1,
    ]
    with pytest.raises(
        DataError, match=r"3 samples cannot give each of 2 ranks x 3 loader workers = 6 streams"
    ):
        exact_plan([2, 1], rank=0, shuffle=True, **kw)


def test_read_amplification_counts_streaming_through_unless_seekable():
    from vit_dist.data.plan import read_amplification

    plans = [
        p
        for r in range(2)
        for p in exact_plan(
            [100], seed=0, epoch=0, rank=r, world_size=2, num_workers=2, batch_size=4, shuffle=False
        )
    ]
    # 4 streams of one shard: without an index they read 25, 50, 75 and 100 samples' bytes
    assert read_amplification(plans, [False], [10.0]) == (2500.0, 1000.0)
    assert read_amplification(plans, [True], [10.0]) == (1000.0, 1000.0)


def test_consumed_per_worker_mirrors_round_robin():
    per_worker = [3, 3, 2]  # resampled epochs give lower workers the remainder
    order = [w for rnd in range(3) for w in range(3) if rnd < per_worker[w]]  # the DataLoader's order
    for k in range(sum(per_worker) + 1):
        expected = [sum(1 for w in order[:k] if w == x) for x in range(3)]
        done, nxt = consumed_per_worker(k, per_worker)
        assert done == expected
        if k < len(order):
            assert nxt == order[k]
            # a round-robin restarted at nxt over the remaining batches continues the same order
            left = [n - d for n, d in zip(per_worker, done)]
            rotated = [(nxt + i) % 3 for rnd in range(3) for i in range(3) if rnd < left[(nxt + i) % 3]]
            assert rotated == order[k:]
    with pytest.raises(DataError):
        consumed_per_worker(9, per_worker)


def test_resampled_batches_add_up_to_the_epoch_length():
    for total, world, workers, batch in itertools.product([64, 100, 1000], [1, 2, 3], [1, 2, 4], [1, 8]):
        per_worker = resampled_batches(total, world, workers, batch)
        assert max(per_worker) - min(per_worker) <= 1
        assert sum(per_worker) * batch * world >= total > (sum(per_worker) - 1) * batch * world


def test_resampled_shards_are_weighted_by_size_and_deterministic():
    sizes = [1000, 1000, 1000, 100]  # a short last shard must not be drawn as often as a full one
    draws = list(itertools.islice(resampled_shards(4, seed=3, epoch=1, rank=0, worker=1, sizes=sizes), 31000))
    share = [draws.count(i) / len(draws) for i in range(4)]
    for i, n in enumerate(sizes):
        assert abs(share[i] - n / sum(sizes)) < 0.01, share
    again = list(itertools.islice(resampled_shards(4, seed=3, epoch=1, rank=0, worker=1, sizes=sizes), 31000))
    assert draws == again  # a pure function of (seed, epoch, rank, worker): resumable
    other = list(itertools.islice(resampled_shards(4, seed=3, epoch=1, rank=1, worker=1, sizes=sizes), 100))
    assert other != draws[:100]
    # unknown sizes (remote shards without dataset.json): uniform over shards
    uniform = list(itertools.islice(resampled_shards(4, seed=3, epoch=1, rank=0, worker=1), 20000))
    assert all(abs(uniform.count(i) / 20000 - 0.25) < 0.015 for i in range(4))
    with pytest.raises(DataError, match="3 shard sizes for 4 shards"):
        next(resampled_shards(4, 0, 0, 0, 0, sizes=[1, 2, 3]))


def test_shuffle_buffer_holds_exactly_what_it_has_read_and_not_emitted():
    for size, n in [(1, 10), (4, 3), (4, 4), (5, 40), (16, 100)]:
        expected = list(shuffle_buffer(iter(range(n)), size, random.Random(7)))
        assert sorted(expected) == list(range(n))
        for m in range(n + 1):
            read = []
            held: list[int] = []
            source = (read.append(i) or i for i in range(n))
            out = list(itertools.islice(shuffle_buffer(source, size, random.Random(7), held=held), m))
            assert out == expected[:m]  # the same order with or without a visible buffer
            if size > 1:
                assert sorted(held) == sorted(set(read) - set(out))


def _emitted(sizes, seed, epoch, seg, history, rank, worker):
    """What stream (rank, worker) of segment ``len(history)`` emits, replayed the way the
    pipeline reads it: its slices in order, through its shuffle buffer, cut at its batches."""
    plan = exact_plan(
        sizes,
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=seg.world_size,
        num_workers=seg.num_streams,
        batch_size=seg.batch_size,
        shuffle=True,
        history=history,
    )[worker]
    items = ((s.shard, i) for s in plan.slices for i in range(s.start, s.stop))
    rng = random.Random(stream_seed("buffer", seed, epoch, rank, worker, len(history)))
    return list(shuffle_buffer(items, seg.shuffle_buffer, rng)), plan.num_batches


@pytest.mark.parametrize("seed", range(6))
def test_replanned_epochs_see_every_sample_exactly_once(seed):
    # Segments with other world sizes, workers, batch sizes and buffers, each cut at a random
    # number of batches; the last one runs to the end of the epoch.
    rnd = random.Random(seed)
    sizes = [rnd.randint(1, 40) for _ in range(rnd.randint(12, 20))]
    all_samples = sorted((s, i) for s, n in enumerate(sizes) for i in range(n))
    history: tuple[Segment, ...] = ()
    seen: list = []
    dropped = 0
    for k in range(4):
        world, streams = rnd.choice([(1, 1), (2, 2), (3, 1), (1, 4), (2, 3)])
        batch, buffer = rnd.choice([1, 3, 8]), rnd.choice([0, 1, 5, 16])
        seg = Segment(world, streams, batch, buffer, 0)
        left_before = plan_left(sizes, seed, 3, True, history)
        assert left_before == len(all_samples) - len(seen)
        runs = {
            (r, w): _emitted(sizes, seed, 3, seg, history, r, w) for r in range(world) for w in range(streams)
        }
        per_worker = [runs[0, w][1] for w in range(streams)]
        if left_before < world * streams:  # the tail: fewer samples than streams, dropped
            assert sum(per_worker) == 0
            dropped = left_before
            break
        assert {n for _, n in runs.values()} == {per_worker[0]}  # equal batch counts on every rank
        last = k == 3
        consumed = sum(per_worker) if last else rnd.randint(1, sum(per_worker))
        done, _ = consumed_per_worker(consumed, per_worker)
        for (_rank, w), (items, _) in runs.items():
            seen += items[: done[w] * batch]  # what the trainer consumed (padding comes after)
        history += (Segment(world, streams, batch, buffer, consumed),)
    assert len(seen) == len(set(seen))  # nothing twice
    assert len(seen) == len(all_samples) - dropped and set(seen) <= set(all_samples)


def test_replanned_stream_reads_scattered_samples_in_shard_order():
    sizes = [30, 30, 30, 30]
    history = (Segment(2, 2, 4, 8, 3),)  # 3 batches per rank consumed through buffers of 8
    plans = [
        p
        for r in range(3)
        for p in exact_plan(
            sizes,
            seed=0,
            epoch=0,
            rank=r,
            world_size=3,
            num_workers=1,
            batch_size=5,
            shuffle=True,
            history=history,
        )
    ]
    assert sum(p.num_samples for p in plans) == 120 - 2 * 3 * 4
    for p in plans:
        shards = [s.shard for s in p.slices]
        groups = [k for k, _ in itertools.groupby(shards)]
        assert len(groups) == len(set(shards))  # a shard's runs are together: one pass reads them
        for a, b in zip(p.slices, p.slices[1:]):
            assert a.shard != b.shard or a.stop < b.start  # sorted, disjoint, gaps kept apart


def test_resampled_batches_after_a_replan_cover_the_rest_of_the_epoch():
    history = (Segment(2, 2, 8, 16, 5),)  # 2 ranks x 8 x 5 = 80 of 300 samples drawn
    per_worker = resampled_batches(300, 3, 1, 4, history)
    assert per_worker == [19]  # ceil(220 / (3 * 4))
    assert resampled_batches(80, 3, 1, 4, history) == [0]
    draws = lambda seg: list(itertools.islice(resampled_shards(9, 0, 1, 0, 0, None, seg), 50))
    assert draws(0) != draws(1)  # a re-planned segment does not redraw the same shards
