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

from .exact import (
    Intervals,
    Segment,
    Slice,
    StreamPlan,
    all_stream_plans,
    consumed_per_worker,
    epoch_positions,
    exact_plan,
    plan_left,
    planned_stop,
    read_amplification,
    shard_order,
    stream_plans,
)
from .resampled import resampled_batches, resampled_left, resampled_shards, resampled_start
from .seeds import derive_seed, sample_seed, shuffle_buffer, stream_seed

__all__ = [
    "Intervals",
    "Segment",
    "Slice",
    "StreamPlan",
    "all_stream_plans",
    "consumed_per_worker",
    "derive_seed",
    "epoch_positions",
    "exact_plan",
    "plan_left",
    "planned_stop",
    "read_amplification",
    "resampled_batches",
    "resampled_left",
    "resampled_shards",
    "resampled_start",
    "sample_seed",
    "shard_order",
    "shuffle_buffer",
    "stream_plans",
    "stream_seed",
]
