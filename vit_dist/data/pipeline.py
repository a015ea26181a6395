"""The per-rank streaming loader: shard list -> ... -> batch, with a checkpointable position.

Stages, in the order :meth:`ShardStream.__iter__` applies them (one stream per loader worker):

    shard list (spec.py)
    -> deterministic shard shuffle seeded by (seed, epoch)          plan.py
    -> explicit split by rank (contiguous, so also by node)          plan.py
    -> explicit split by loader worker                               plan.py
    -> seek to the slice by the shard's byte-offset index            index.py
    -> tar to samples (bad shards become counted placeholders)       tar_reader.py
    -> shuffle buffer seeded by (seed, epoch, rank, worker)          shuffle_buffer()
    -> masked padding up to the epoch's common batch count           (exact mode)
    -> skip the batches a resumed run already consumed               (no decode)
    -> decode + transform to uint8, torch seeded per sample           transforms.py
    -> batch: {"image" (B,3,S,S), "label" (B,) int64, "valid" (B,) bool, "key": [str]}

"image" is float32, normalised in the worker, when ``normalize_in_workers``; otherwise uint8
with the random-erasing rectangles in "erase" (B, 4) int32, and :meth:`ShardLoader.images`
normalises it on the training device. Use ``loader.images(batch, device)`` either way.

Every rank yields exactly ``len(loader)`` batches of exactly ``batch_size`` rows. Rows that are
padding or replace a bad sample are copies of other rows of the stream with ``valid=False``:
training may use them (shapes stay static), evaluation must mask them (``training/exact_eval.py``).

Position: ``state_dict()`` is ``(epoch, batches consumed by this rank)`` plus the settings the
stream depends on (and the earlier segments of a re-planned epoch); ``load_state_dict()``
makes the next iteration of that epoch start right after the consumed batches, with the same
samples, order and augmentation as the uninterrupted run. Loaded with another world size,
worker count, batch size or shuffle buffer, it re-plans the epoch's unseen samples for the
new settings instead, so every sample is still seen once (see ``plan.py``).

Start-up (exact mode, rank 0, one line): samples, shards, how many are indexed, the streams,
and the epoch's read amplification (bytes read / bytes of the split): 1.0 when every stream
seeks to its slice, more when streams sharing an unindexed shard stream through its start.
A loader never runs more streams than a rank has batches, and an evaluation loader also fits
its streams to the validation set's shards (:func:`fit_workers`).

Bad samples: each batch carries its worker's running counts; :class:`ShardLoader` sums them
into ``bad_samples`` / ``samples_seen`` for this rank (the trainer sums them over ranks).
The limit, ``bad > max_bad_fraction * max(seen, bad_min_seen)``, is on the whole
job: the trainer checks the all-rank sums at each logging step
(:meth:`ShardLoader.check_bad_fraction`), and each rank checks its own counts scaled to all
ranks after every batch. The loader never runs collectives itself.

``ShardLoader`` is deliberately not a ``torch.utils.data.DataLoader``: ``accelerate.prepare()``
passes other objects through untouched, so it cannot re-shard or re-dispatch this loader
(which would hand rank 0's batches to everyone). Do not wrap it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..core.config import AugmentSection, DataSection
from ..core.errors import DataError
from ..runtime.start import start_method
from .classes import class_map, class_mismatch
from .index import load_offsets, read_header, usable_index
from .plan import (
    Segment,
    all_stream_plans,
    consumed_per_worker,
    derive_seed,
    exact_plan,
    plan_left,
    read_amplification,
    resampled_batches,
    resampled_left,
    resampled_shards,
    resampled_start,
    sample_seed,
    shuffle_buffer,
    stream_seed,
)
from .spec import ShardList, resolve_shards, with_sizes
from .tar_reader import BadSample, is_http, read_runs, read_slice
from .transforms import DEFAULT_BACKEND, NO_ERASE, SampleTransform
from .workers import (
    WorkerDied,
    WorkerProgress,
    dataloader_timeout,
    guard_timeout,
    torch_worker_count_quiet,
    usable_cores,
    worker_init,
)

log = logging.getLogger("vit_dist.data")

# The members taken as a sample's image, first match wins. decode.py decodes each in training
# and evaluation alike (JPEG and PNG through torchvision.io, the others through PIL).
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff", "gif")
_PAD = object()  # a padding slot of an exact epoch (not a sample: not counted as seen)


@dataclass
class DataConfig:
    """One loader's settings. What the user sets comes as the run's own sections, declared once
    in ``core/config.py``: ``data`` (shards' layout, workers, buffer, limits, preprocessing) and
    ``augment`` (training augmentation). The fields beside them are what a loader adds: its
    shards and split, whether it trains (``training``; ``data.train`` names the training
    shards), and what the trainer derives (the per-rank batch, the seed, the device type the
    batches go to). :func:`loader_config` builds one for a run."""

    shards: str | list[str]
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    split: str = "train"
    training: bool = True  # shuffled and augmented; False: every sample once, in order, not augmented
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"  # the type of the device the batches go to ("cuda": pinned, normalised there)
    backend: str = DEFAULT_BACKEND  # the image decoder: "auto", "tv" or "pil" (decode.py)
    # "auto": fork on Linux where the interpreter forks safely, else forkserver; see
    # runtime/start.py. Workers only decode on the CPU, and fork starts them in milliseconds.
    worker_start_method: str = "auto"
    # A stalled read (a pipe: command waiting on a dead object store) must not hang the run:
    # no batch from the workers for this many seconds is a DataError. 0 disables.
    worker_timeout: float = 600.0
    bad_min_seen: int = 1000

    def __post_init__(self):
        d = self.data
        if d.mode not in ("exact", "resampled"):
            raise DataError(f"mode must be 'exact' or 'resampled', got {d.mode!r}")
        if d.mode == "resampled":
            self.epoch_samples()  # refuses a resampled loader without an epoch length
        if not self.training and d.mode != "exact":
            raise DataError("evaluation data must use mode='exact' (exactly-once evaluation)")
        if self.batch_size < 1 or d.workers < 0:
            raise DataError(f"batch_size must be >= 1 and workers >= 0 ({self.batch_size}, {d.workers})")

    @property
    def pin_memory(self) -> bool:
        """``data.pin_memory`` where it serves: a copy to a CUDA device."""
        return self.data.pin_memory and self.device == "cuda"

    @property
    def normalize_in_workers(self) -> bool:
        """Whether the workers normalise (float32 batches) or the device does (uint8 batches:
        a quarter of the bytes through shared memory, pinning and the copy). ``auto``: the
        workers for a CPU, the device for an accelerator."""
        on = self.data.normalize_on
        return on == "worker" or (on == "auto" and self.device == "cpu")

    def epoch_samples(self) -> int:
        """``data.samples_per_epoch``, which resampled mode needs (``__post_init__`` asks it once)."""
        if not self.data.samples_per_epoch:
            raise DataError("mode='resampled' needs samples_per_epoch (the epoch length)")
        return self.data.samples_per_epoch


def loader_config(
    data: DataSection,
    augment: AugmentSection,
    *,
    train: bool,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> DataConfig:
    """A run's training loader (``train=True``) or validation loader, feeding ``device``."""
    shards = data.train if train else data.val
    if shards is None:  # callers build a validation loader only where data.val is set
        raise DataError(f"data.{'train' if train else 'val'} is not set: no shards to load")
    if not train:  # evaluation reads every sample once, in order
        data = dataclasses.replace(data, mode="exact", samples_per_epoch=None, shuffle_buffer=0)
    return DataConfig(
        shards=shards,
        data=data,
        augment=augment,
        split="train" if train else "val",
        training=train,
        batch_size=batch_size,
        seed=seed,
        device=device.type,
    )


class ShardStream(IterableDataset):
    """The stream of one (rank, worker); built by :class:`ShardLoader`, iterated in a worker."""

    def __init__(self, shards: ShardList, cfg: DataConfig, rank: int, world_size: int, num_classes: int):
        super().__init__()
        self.shards, self.cfg, self.rank, self.world_size = shards, cfg, rank, world_size
        self.num_classes = num_classes
        self.transform = SampleTransform(cfg.data, cfg.augment if cfg.training else None, backend=cfg.backend)
        self.epoch = 0
        self.history: tuple[Segment, ...] = ()  # finished segments of self.epoch (re-planned)
        self.skip_batches = [0] * max(1, cfg.data.workers)  # per stream, set by the loader on resume
        self.worker_offset = 0  # DataLoader worker i plays stream (i + offset) % W (resume)
        self.progress: WorkerProgress | None = None  # set by the loader for worker processes
        # Samples (recorded keys) that killed a worker while it decoded them: bad from now on.
        self.poisoned: frozenset[str] = frozenset()

    @property
    def num_streams(self) -> int:
        return max(1, self.cfg.data.workers)

    def segment(self, batches: int) -> Segment:
        """This stream's settings as a finished segment of ``batches`` batches per rank."""
        c = self.cfg
        return Segment(self.world_size, self.num_streams, c.batch_size, c.data.shuffle_buffer, batches)

    def batches_per_worker(self, epoch: int, history: tuple[Segment, ...] = ()) -> list[int]:
        c = self.cfg
        if c.data.mode == "resampled":
            return resampled_batches(
                c.epoch_samples(), self.world_size, self.num_streams, c.batch_size, history
            )
        return [p.num_batches for p in self._exact_plans(epoch, history)]

    def _exact_plans(self, epoch: int, history: tuple[Segment, ...]):
        c = self.cfg
        return exact_plan(
            self.shards.counted_sizes(),
            seed=c.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.num_streams,
            batch_size=c.batch_size,
            shuffle=c.training,
            history=history,
        )

    def _read(self, shard: int, runs: list[tuple[int, int | None]]) -> Iterator:
        """The samples ``runs`` of shard ``shard``: seeking by its index when it has a usable one
        and can seek (a local file, an http(s) URL), else streaming through it (``pipe:``, ...).
        The shard's size is known (an exact epoch, or a resampled draw of a counted shard)."""
        url, n, indexes = self.shards.urls[shard], self.shards.counted_sizes()[shard], self.shards.indexes
        index = indexes[shard] if indexes else None
        offsets = shard_bytes = None
        if index is not None and (os.path.isabs(url) or is_http(url)):
            offsets = load_offsets(index, url, n)
            if offsets is not None and is_http(url):  # each range answer is checked against it
                try:
                    shard_bytes = read_header(index)[1]
                except DataError:  # replaced since it was read: stream through this time
                    offsets = None
        return read_runs(
            url,
            runs,
            max_bytes=self.cfg.data.max_sample_bytes,
            count=n,
            offsets=offsets,
            shard_bytes=shard_bytes,
        )

    def _buffer(self, num_batches: int) -> int:
        """The stream's shuffle buffer. A resampled stream holds at most what it emits in the
        epoch: at many streams (ImageNet-21k at 4,096 ranks x 8 workers emits 448 samples per
        stream) a full buffer of 1,000 would read twice what the stream uses, every epoch. An
        exact stream reads only its own slice, so its buffer costs no extra reading."""
        c = self.cfg
        return (
            c.data.shuffle_buffer
            if c.data.mode == "exact"
            else min(c.data.shuffle_buffer, num_batches * c.batch_size)
        )

    def _read_from(self, shard: int, starts: random.Random) -> Iterator:
        """A resampled draw: the whole shard from a random sample on, then its start up to that
        sample (:func:`plan.resampled_start`). A shard of unknown size is read from its start."""
        sizes = self.shards.sizes
        n = sizes[shard] if sizes else None
        k = resampled_start(starts, n)
        if not k:
            if n is None:
                return read_slice(self.shards.urls[shard], max_bytes=self.cfg.data.max_sample_bytes)
            return self._read(shard, [(0, None)])
        return itertools.chain(self._read(shard, [(k, None)]), self._read(shard, [(0, k)]))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = ((info.id if info is not None else 0) + self.worker_offset) % self.num_streams
        # In a worker process: its pid and the sample it decodes, for the rank (WorkerProgress).
        progress, slot = (self.progress, info.id) if info is not None else (None, 0)
        if progress is not None:
            progress.started(slot)
        c, B, epoch, history = self.cfg, self.cfg.batch_size, self.epoch, self.history
        segment = len(history)
        # shard list -> shard shuffle (seed, epoch) -> split by rank -> split by worker -> tar to samples
        if c.data.mode == "exact":
            plan = self._exact_plans(epoch, history)[worker]
            num_batches = plan.num_batches
            # A re-planned stream may hold scattered samples of a shard: one pass per shard.
            items: Iterator[Any] = itertools.chain.from_iterable(
                self._read(shard, [(s.start, s.stop) for s in group])
                for shard, group in itertools.groupby(plan.slices, key=lambda s: s.shard)
            )
        else:
            num_batches = self.batches_per_worker(epoch, history)[worker]
            picks = resampled_shards(
                len(self.shards.urls), c.seed, epoch, self.rank, worker, self.shards.sizes, segment
            )
            starts = random.Random(stream_seed("start", c.seed, epoch, self.rank, worker, segment))
            items = itertools.chain.from_iterable(self._read_from(i, starts) for i in picks)
        # shuffle buffer
        if c.training:
            rng = random.Random(stream_seed("buffer", c.seed, epoch, self.rank, worker, segment))
            items = shuffle_buffer(items, self._buffer(num_batches), rng)
        # masked padding so every stream has num_batches full batches; then cut the epoch there
        items = itertools.islice(itertools.chain(items, itertools.repeat(_PAD)), num_batches * B)
        # resume: skip consumed batches without decoding them
        start = self.skip_batches[worker] * B
        items = itertools.islice(items, start, None)
        # decode + transform, then batch
        aug_seed = stream_seed("augment", c.seed, epoch, self.rank, worker, segment)
        decoded = (self._decode(item, aug_seed, pos, progress, slot) for pos, item in enumerate(items, start))
        yield from self._batches(decoded, worker)

    def _decode(
        self, item, aug_seed: int, position: int, progress: WorkerProgress | None = None, slot: int = 0
    ):
        """-> (uint8 image, label, key, erase rect) or BadSample or _PAD; never raises for a bad sample.

        Everything a sample goes through before collation runs under the guard: decode (an
        image over ``max_image_pixels`` is refused from its header), augmentation and the check
        that the result is a uint8 (3, S, S) image (``SampleTransform.uint8``), so one odd
        image is a counted bad sample, never a failed batch.
        """
        if item is _PAD or isinstance(item, BadSample):
            return item
        key = f"{item['__url__']}#{item['__key__']}"
        if self.poisoned and WorkerProgress.recorded_key(key) in self.poisoned:
            return BadSample(
                key, f"sample {key} killed a loader worker while it was decoded (a native crash)"
            )
        ext = next((e for e in IMAGE_EXTS if e in item), None)
        if ext is None:
            return BadSample(key, f"sample {key} has no image ({', '.join(IMAGE_EXTS)})")
        try:
            label = int(item["cls"].decode().strip())
        except (KeyError, ValueError, UnicodeDecodeError):
            return BadSample(key, f"sample {key} has a missing or unparsable .cls label")
        if not 0 <= label < self.num_classes:
            return BadSample(key, f"sample {key} has label {label} outside [0, {self.num_classes})")
        # In the main process (workers=0) the trainer's RNG must not be disturbed.
        trainer_rng = torch.get_rng_state() if get_worker_info() is None else None
        # Only the CPU generator: torch.manual_seed also seeds (lazily) every accelerator, which
        # per sample would cost about as much as decoding the image.
        torch.default_generator.manual_seed(sample_seed(aug_seed, position))
        if progress is not None:  # the rank names this sample if the worker dies decoding it
            progress.decoding(slot, key)
        try:
            image, rect = self.transform.uint8(item[ext])
        except Exception as e:  # PIL / libjpeg / torchvision raise many types for corrupt data
            return BadSample(key, f"sample {key} does not decode: {type(e).__name__}: {e}")
        finally:
            if progress is not None:
                progress.done(slot)
            if trainer_rng is not None:
                torch.set_rng_state(trainer_rng)
        return image, label, item["__key__"], rect

    def _batches(self, decoded: Iterator, worker: int) -> Iterator[dict]:
        B, S = self.cfg.batch_size, self.cfg.data.img_size
        seen = bad = 0
        previous: list = []  # good rows of the last batch: filler when a batch has none
        while True:
            group = list(itertools.islice(decoded, B))
            if not group:
                return
            good = [g for g in group if isinstance(g, tuple)]
            reasons = [g.reason for g in group if isinstance(g, BadSample)]
            seen += sum(g is not _PAD for g in group)
            for r in reasons:  # each of the first 10 per worker, then every 1000th: no log flood
                bad += 1
                if bad <= 10 or bad % 1000 == 0:
                    log.warning("bad sample #%d of worker %d skipped: %s", bad, worker, r)
            filler = good or previous
            rows, valid = [], []
            for i, g in enumerate(group):
                if isinstance(g, tuple):
                    rows.append(g)
                    valid.append(True)
                else:  # padding or bad: a masked copy keeps the batch shape static
                    blank = (torch.zeros(3, S, S, dtype=torch.uint8), 0, "", NO_ERASE)
                    rows.append(filler[i % len(filler)] if filler else blank)
                    valid.append(False)
            previous = good or previous
            images = torch.stack([r[0] for r in rows])  # (B, 3, S, S) uint8
            erase = torch.tensor([r[3] for r in rows], dtype=torch.int32) if self.cfg.training else None
            if self.cfg.normalize_in_workers:
                out = {"image": self.transform.normalize(images, erase)}  # float32
            else:
                out = {"image": images} if erase is None else {"image": images, "erase": erase}
            yield {
                **out,
                "label": torch.tensor([r[1] for r in rows], dtype=torch.int64),  # (B,)
                "valid": torch.tensor(valid, dtype=torch.bool),  # (B,)
                "key": [r[2] for r in rows],
                "_worker": worker,
                "_seen": seen,
                "_bad": bad,
                "_bad_reason": reasons[-1] if reasons else "",
            }


_worker_counts_warned: set[int] = set()


def _warn_worker_count(workers: int) -> None:
    """Once per process and count: more loader workers on this node than it has usable cores."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    cores = usable_cores()
    if workers * local <= cores or workers in _worker_counts_warned:
        return
    _worker_counts_warned.add(workers)
    log.warning(
        "warning: data.workers=%d loader processes per rank x %d local rank(s) on %d usable CPU "
        "cores: they compete for the cores with each other and the training; at most %d per rank fit",
        workers,
        local,
        cores,
        max(1, cores // local),
    )


class ShardLoader:
    """Per-rank loader over a :class:`ShardStream` with ``set_epoch``, ``state_dict`` and bad counts.

    ``rank``/``world_size`` are explicit (see :func:`dist_rank_world`); the loader never asks
    torch.distributed or accelerate to split data.
    """

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        shards = resolve_shards(cfg.shards, cfg.split, meta=cfg.data.meta)
        if cfg.data.mode == "exact":
            shards = with_sizes(shards)
        num_classes = cfg.data.num_classes or (len(shards.classes) if shards.classes else None)
        if not num_classes:
            raise DataError(f"number of classes unknown for {shards.spec}: set num_classes (no dataset.json)")
        self.num_classes = num_classes
        # Class names (index = label) where the data set lists them; None otherwise.
        self.classes: list[str] | None = (
            [str(c) for c in shards.classes]
            if shards.classes and len(shards.classes) == num_classes
            else None
        )
        self.shards = shards
        # Every rank decides the evaluation streams from the same files, so the same way.
        seekable = (
            seekable_shards(shards) if cfg.data.mode == "exact" and (rank == 0 or not cfg.training) else None
        )
        capped = None
        if cfg.data.mode == "exact":
            workers, why = fit_workers(
                shards.counted_sizes(),
                seekable,
                world_size,
                cfg.data.workers,
                cfg.batch_size,
                train=cfg.training,
            )
            if workers != cfg.data.workers:
                capped, cfg = (
                    (cfg.data.workers, why),
                    dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=workers)),
                )
                self.cfg = cfg
        self.dataset = ShardStream(shards, cfg, rank, world_size, num_classes)
        self.epoch = 0
        self._history: tuple[Segment, ...] = ()  # earlier segments of self.epoch (re-plan)
        self._start = 0  # batches of self.epoch to skip at the next iteration (resume)
        self._consumed = 0
        self.bad_samples = 0  # this rank, cumulative over the run
        self.samples_seen = 0
        self.last_bad_reason = ""
        self.poisoned: set[str] = set()  # samples that killed a worker (recorded keys)
        self.label_map: torch.Tensor | None = None  # see map_labels
        self.dataset.batches_per_worker(0)  # start-up check: raises now if the plan cannot be made
        if rank == 0:
            _warn_worker_count(self.cfg.data.workers)
        if rank == 0 and seekable is not None:
            self._report(seekable, capped)
        elif rank == 0 and cfg.data.mode == "resampled" and shards.sizes is not None:
            unindexed = len(shards.urls) - sum(seekable_shards(shards))
            if unindexed:  # each draw starts at a random sample: without an index, read up to it
                log.info(
                    "data: %s split, resampled: %d of %d shards have no usable index, so each draw of one "
                    "streams through it up to its random start sample (python -m vit_dist.data.plan "
                    "--mode resampled shows the read amplification); index them to seek instead: "
                    "python -m vit_dist.data.shards --index DIR",
                    cfg.split,
                    unindexed,
                    len(shards.urls),
                )

    def _report(self, seekable: list[bool], capped: tuple[int, str] | None) -> None:
        """One start-up line (rank 0): streams, seekable shards and the read amplification of an
        epoch: bytes read / bytes of the split (1.0 when every stream seeks to its samples)."""
        c, shards, W = self.cfg, self.shards, self.dataset.num_streams
        sizes = shards.counted_sizes()  # an exact epoch's
        # Every stream of the job (rank 0 reports for all): one pass, not exact_plan per rank.
        plans = all_stream_plans(
            sizes,
            seed=c.seed,
            epoch=0,
            world_size=self.world_size,
            num_workers=W,
            batch_size=c.batch_size,
            shuffle=c.training,
        )
        per_sample = [
            os.path.getsize(u) / n if os.path.isabs(u) and n and os.path.isfile(u) else 1.0
            for u, n in zip(shards.urls, sizes)
        ]
        read, split = read_amplification(plans, seekable, per_sample)
        amplification = read / split if split else 1.0
        cap = f" (data.workers={capped[0]} capped: {capped[1]})" if capped is not None else ""
        hint = (
            "; index the shards to seek instead: python -m vit_dist.data.shards --index DIR"
            if amplification > 1.01 and not all(seekable)
            else ""
        )
        log.info(
            "data: %s split: %d samples in %d shards (%d indexed), %d ranks x %d loader workers = %d "
            "streams%s; read amplification %.2f (bytes read / bytes of the split)%s",
            c.split,
            sum(sizes),
            len(sizes),
            sum(seekable),
            self.world_size,
            W,
            self.world_size * W,
            cap,
            amplification,
            hint,
        )

    def images(self, batch: dict, device: torch.device | str) -> torch.Tensor:
        """The batch's normalised float32 images on ``device`` (non-blocking copy from pinned
        memory; uint8 batches are normalised and erased there, without a host sync)."""
        x = batch["image"].to(device, non_blocking=True)
        if x.dtype != torch.uint8:
            return x  # normalised in the workers
        erase = batch.get("erase")
        erase = erase.to(device, non_blocking=True) if erase is not None else None
        return self.dataset.transform.normalize(x, erase)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start = 0
            self._history = ()
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this rank yields in a whole epoch (identical on every rank)."""
        return sum(self.dataset.batches_per_worker(self.epoch))

    def batches_left(self) -> int:
        """Batches the next iteration yields: the rest of the current epoch, which after a
        resume, or a re-plan for other settings, is less than ``len(self)``."""
        return sum(self.dataset.batches_per_worker(self.epoch, self._history)) - self._start

    def state_dict(self) -> dict:
        c = self.cfg
        return {
            "epoch": self.epoch,
            "batch": self._consumed,
            "seed": c.seed,
            "world_size": self.world_size,
            "workers": c.data.workers,
            "batch_size": c.batch_size,
            "shuffle_buffer": c.data.shuffle_buffer,
            "mode": c.data.mode,
            "segments": [dataclasses.asdict(seg) for seg in self._history],
            "bad_samples": self.bad_samples,
            "samples_seen": self.samples_seen,
            "poisoned": sorted(self.poisoned),
        }

    def load_state_dict(self, state: dict, *, counters: bool = True) -> None:
        """Resume: the next iteration of ``state['epoch']`` yields the batches of that epoch that
        ``state`` has not consumed. With the settings of ``state`` (world size, loader workers,
        batch size, shuffle buffer) that is the rest of the same batches; with other settings the
        epoch's unseen samples are re-planned for these (``plan.py``). ``counters=False`` leaves
        the bad-sample counts alone (they are per rank: meaningless on another world size)."""
        c = self.cfg
        # The trainer's names for these keys, for a message the user can act on.
        fixed = {"train.seed": ("seed", c.seed), "data.mode": ("mode", c.data.mode)}
        changed = [
            f"{k}={state.get(name)} (now {v})" for k, (name, v) in fixed.items() if state.get(name) != v
        ]
        if changed:
            raise DataError(
                f"cannot resume mid-epoch: the checkpoint's sample order was drawn with {', '.join(changed)}; "
                f"set {' and '.join(x.split(' ')[0] for x in changed)} to resume"
            )
        history = tuple(Segment(**seg) for seg in state["segments"])
        batch = int(state["batch"])
        checkpointed = Segment(
            state["world_size"], max(1, state["workers"]), state["batch_size"], state["shuffle_buffer"], batch
        )
        if batch and checkpointed != self.dataset.segment(batch):
            history += (checkpointed,)
            batch = 0
            left, streams = (
                self._left_samples(int(state["epoch"]), history),
                self.world_size * self.dataset.num_streams,
            )
            (log.warning if self.rank == 0 else log.info)(
                "data: epoch %d re-planned for %s: %d samples of it are left (%s before)%s",
                state["epoch"],
                _settings(self.dataset.segment(0)),
                left,
                _settings(checkpointed),
                f"; fewer than the {streams} streams, so they are skipped"
                if c.data.mode == "exact" and 0 < left < streams
                else "",
            )
        self.epoch, self._start, self._history = int(state["epoch"]), batch, history
        self._consumed = self._start
        if counters:
            self.bad_samples, self.samples_seen = int(state["bad_samples"]), int(state["samples_seen"])
            self.poisoned = {str(k) for k in state.get("poisoned", [])}

    def _left_samples(self, epoch: int, history: tuple[Segment, ...]) -> int:
        c = self.cfg
        if c.data.mode == "resampled":
            return resampled_left(c.epoch_samples(), history)
        return plan_left(self.shards.counted_sizes(), c.seed, epoch, shuffle=c.training, history=history)

    def __iter__(self) -> Iterator[dict]:
        per_worker = self.dataset.batches_per_worker(self.epoch, self._history)
        start, self._start = self._start, 0
        self.dataset.epoch, self.dataset.history = self.epoch, self._history
        self._consumed = start
        while self._consumed < sum(per_worker):
            try:
                yield from self._iterate(per_worker)
                return
            except WorkerDied as e:
                fresh = [k for k in e.keys if k not in self.poisoned]
                if not fresh:  # died between samples, or again on one already skipped: not a sample's fault
                    raise
                # The sample is bad from now on (also in later epochs, and after a resume); the
                # workers start again where the rank is, like a resume: every other sample of
                # the epoch still comes exactly once.
                self.poisoned.update(fresh)
                (log.warning if self.rank == 0 else log.info)(
                    "data: %s; counted as a bad sample, loader workers restarted at batch %d of the epoch",
                    e,
                    self._consumed,
                )

    def _iterate(self, per_worker: list[int]) -> Iterator[dict]:
        """One DataLoader over the epoch's batches from ``self._consumed`` on."""
        c = self.cfg
        self.dataset.skip_batches, self.dataset.worker_offset = consumed_per_worker(
            self._consumed, per_worker
        )
        self.dataset.poisoned = frozenset(self.poisoned)
        method = start_method(c.worker_start_method) if c.data.workers > 0 else None
        progress = WorkerProgress(c.data.workers) if c.data.workers > 0 else None
        self.dataset.progress = progress
        with torch_worker_count_quiet():  # said once, in our words (_warn_worker_count)
            loader = self._dataloader(method, progress)
        base_bad, base_seen = self.bad_samples, self.samples_seen
        bad, seen = {}, {}  # running counts per worker this iteration
        for batch in guard_timeout(loader, c.worker_timeout, self.shards.spec, method, progress):
            w = batch.pop("_worker")
            bad[w], seen[w] = batch.pop("_bad"), batch.pop("_seen")
            reason = batch.pop("_bad_reason")
            self.last_bad_reason = reason or self.last_bad_reason
            self.bad_samples, self.samples_seen = base_bad + sum(bad.values()), base_seen + sum(seen.values())
            self._consumed += 1
            self._check_bad_limit()
            if self.label_map is not None:
                batch["label"] = self.label_map[batch["label"]]
            yield batch

    def _dataloader(self, method: str | None, progress: WorkerProgress | None) -> DataLoader:
        c = self.cfg
        return DataLoader(
            self.dataset,
            batch_size=None,  # the stream batches itself
            num_workers=c.data.workers,
            pin_memory=c.pin_memory,
            persistent_workers=False,  # workers re-read the epoch/skip set above
            prefetch_factor=c.data.prefetch if c.data.workers > 0 else None,
            # DataLoader draws its base seed from this generator, not from the trainer's RNG.
            generator=torch.Generator().manual_seed(derive_seed("loader", c.seed, self.epoch)),
            multiprocessing_context=method,
            timeout=dataloader_timeout(c.worker_timeout, c.data.workers),
            worker_init_fn=worker_init,
        )

    def map_labels(self, mapping: list[int], classes: list[str]) -> None:
        """From now on label ``i`` of this data comes out as ``mapping[i]``, an index into
        ``classes`` (``data.val_class_map``: a val set scored against the training classes).
        Labels are checked against this data's own classes before they are mapped."""
        if len(mapping) != self.num_classes or not all(0 <= m < len(classes) for m in mapping):
            raise ValueError(f"a label map of {self.num_classes} classes onto {len(classes)} expected")
        self.label_map = torch.tensor(mapping, dtype=torch.int64)
        self.num_classes, self.classes = len(classes), list(classes)

    def align_classes(
        self, expected: list[str] | None, expected_count: int, *, expected_what: str
    ) -> str | None:
        """Make this (val) data's labels mean the ``expected`` classes: mapped as
        ``data.val_class_map`` says when it is set (:func:`classes.class_map`). Returns how they
        still differ (:func:`classes.class_mismatch`), or None."""
        how = self.cfg.data.val_class_map
        if how:
            found_what = f"data.val={self.cfg.data.val}"
            mapping = class_map(
                expected, self.classes, how, expected_what=expected_what, found_what=found_what
            )
            self.map_labels(mapping, list(expected or ()))  # class_map refuses None
        return class_mismatch(expected, expected_count, self.classes, self.num_classes)

    def _check_bad_limit(self) -> None:
        """This rank alone, between the all-rank checks: its bad samples against its share of
        every rank's samples (the ranks read equal batch counts, so that is about
        ``samples_seen * world_size``). It stops only a run that the all-rank check would stop
        too, just sooner; one rank given a few bad shards does not stop a healthy job."""
        c = self.cfg
        everyone = self.samples_seen * self.world_size
        if self.bad_samples > c.data.max_bad_fraction * max(everyone, c.bad_min_seen):
            about = f" (about {everyone} on all {self.world_size} ranks)" if self.world_size > 1 else ""
            raise DataError(
                f"{self.bad_samples} bad samples of {self.samples_seen} seen on rank {self.rank}{about} exceed "
                f"max_bad_fraction={c.data.max_bad_fraction} for {self.shards.spec} (last: {self.last_bad_reason})"
            )

    def check_bad_fraction(self, bad: int, seen: int) -> None:
        """The limit on all ranks' counts (summed by the trainer); every rank calls it
        with the same sums, so every rank stops at the same step."""
        c = self.cfg
        if bad > c.data.max_bad_fraction * max(seen, c.bad_min_seen):
            raise DataError(
                f"{bad} bad samples of {seen} seen on all {self.world_size} ranks exceed "
                f"max_bad_fraction={c.data.max_bad_fraction} for {self.shards.spec} (last on rank "
                f"{self.rank}: {self.last_bad_reason or 'none'})"
            )


def seekable_shards(shards: ShardList) -> list[bool]:
    """Which shards a stream can seek in: local files with an index that fits them
    (``index.usable_index``) and http(s) URLs with one (by Range requests, assuming the server
    supports them: one that does not is one warning, then read through). Other URLs (``pipe:``,
    ``s3://`` through ``gopen``) never can."""
    indexes = shards.indexes or [None] * len(shards.urls)
    return [
        (os.path.isabs(url) or is_http(url)) and usable_index(index, url, n) is None
        for url, index, n in zip(shards.urls, indexes, shards.counted_sizes())
    ]


def fit_workers(
    sizes: list[int],
    seekable: list[bool] | None,
    world_size: int,
    workers: int,
    batch_size: int,
    *,
    train: bool,
) -> tuple[int, str]:
    """Loader workers per rank for an exact epoch over shards of ``sizes`` samples, and why
    fewer than ``workers`` (empty: not capped).

    * Never more streams than a rank has batches: every stream pads its last batch, so a
      stream with less than a batch of its own is mostly padding (ImageNet-1k's 50,000
      validation images at 512 ranks x 8 workers would be 8 batches of 90 % padding per rank
      instead of 1), and a worker beyond the rank's batch count adds no parallelism.
    * Evaluation without an index on every shard: streams sharing a shard would each read it
      from its start, so the streams are also capped at the shards (at least one worker: with
      fewer shards than ranks some reading is shared however it is cut). With an index any
      number of streams costs no extra reading, and training keeps its workers (its start-up
      line reports the read amplification instead).

    ``workers=0`` (the main process) stays 0.
    """
    if workers == 0:
        return 0, ""
    per_rank = math.ceil(sum(sizes) / world_size)
    fit, why = (
        max(1, math.ceil(per_rank / batch_size)),
        f"a rank has {math.ceil(per_rank / batch_size)} batch(es)",
    )
    if not train and seekable is not None and not all(seekable):
        by_shards = max(1, len(sizes) // world_size)
        if by_shards < fit:
            fit, why = (
                by_shards,
                "without an index on every shard, streams sharing a shard each read it from its start",
            )
    return (workers, "") if fit >= workers else (fit, why)


def _settings(seg: Segment) -> str:
    return (
        f"world size {seg.world_size}, {seg.num_streams} stream(s) per rank, batch {seg.batch_size}, "
        f"shuffle buffer {seg.shuffle_buffer}"
    )


def dist_rank_world() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def build_loader(cfg: DataConfig, rank: int | None = None, world_size: int | None = None) -> ShardLoader:
    """The trainer's entry point: a :class:`ShardLoader` for this rank (defaults from torch.distributed)."""
    if rank is None or world_size is None:
        rank, world_size = dist_rank_world()
    return ShardLoader(cfg, rank=rank, world_size=world_size)
