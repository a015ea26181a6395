"""``python -m vit_dist.data.plan DATASET_DIR --world-size R --workers W --batch-size B``: the epoch
plan of a whole job, before the job runs.

Prints, for every (rank, loader worker) stream at once: the number of streams, samples per
stream, batches per rank, padded samples, the bytes each stream reads and the read
amplification (bytes read / bytes of the split), computed by ``plan.simulate`` with the loader's
own plan. It reads ``dataset.json`` and the shards' ``.idx`` indexes, never a shard.

``--simulate SAMPLES:SHARDS[:BYTES]`` plans a split that does not exist: SAMPLES spread over
SHARDS as evenly as possible (counts differ by at most one), BYTES (e.g. ``40e9``; default
unknown, then "bytes" are samples) over the shards in proportion to their samples, every
sample the same size. ``--resume-from-world-size R0 --at-batch K`` prints the re-plan of the
rest of the epoch after K batches per rank at R0 ranks. ``--json`` ends the output with one line
of JSON (the figures, keys as printed by ``--help``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict

from ...cli.command import run_cli
from ...core.errors import ConfigError, DataError
from ..pipeline import fit_workers
from . import Segment
from .simulate import (
    ExactFigures,
    ResampledFigures,
    SplitBytes,
    exact_figures,
    resampled_figures,
    split_from_meta,
    uniform_split,
)

COST_MODEL = """cost model of the bytes read: a stream reads its part of a shard in one pass. With the
shard's byte-offset index (<shard>.idx, python -m vit_dist.data.shards --index) it seeks to each
of its slices and reads exactly their samples; without one it streams through the shard from its
first byte to the end of its last slice (to the end of the file when that slice ends the
shard). Offsets come from the .idx files; where a shard has none, samples are taken as equally
large within it (its num_bytes in dataset.json / its sample count). By default (the loader's
behaviour) shards with a usable index are seeked in and the others streamed through;
--no-index streams through every shard, --assume-index seeks in every shard (offsets estimated
where there is no .idx): compare the two to see what indexing the shards would save. Both
figures are always in the JSON (read_amplification_index, read_amplification_no_index).
read_amplification = bytes read / bytes of the split (the sum of its shard files).

resampled mode (--mode resampled --samples-per-epoch N): every stream draws whole shards with the
loader's own RNG (weighted by sample count) and reads them from their start until it has read
the samples it emits plus what its shuffle buffer holds when the epoch ends; expected_repeats
is the samples emitted / the split's samples, coverage the fraction of samples read at least once.

JSON keys (exact): streams, ranks, workers, batch_size, samples, split_samples,
samples_per_stream_min/max, batches_per_rank, padded_samples, shards, shards_indexed,
streams_per_shard_max, shards_per_stream_max, bytes_known, index, split_bytes,
bytes_per_stream_min/max, bytes_read, read_amplification, read_amplification_index,
read_amplification_no_index, plan_seconds, plus mode, split, source, seed, epoch, resume."""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one-line config errors (exit 2 via ``run_cli``)."""

    def error(self, message: str):
        raise ConfigError(f"{message} (python -m vit_dist.data.plan --help)")


def _number(name: str, lo: int, *, big: bool = False) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``lo`` (``big``: also written like 40e9)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
            if big:
                try:
                    f = float(text)
                    value = int(f) if math.isfinite(f) and f == int(f) else None
                except ValueError:
                    pass
        if value is None or value < lo:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number >= {lo}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


def _simulated(text: str) -> tuple[int, int, int | None]:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--simulate takes SAMPLES:SHARDS[:BYTES], got {text!r}")
    samples = _number("SAMPLES", 1, big=True)(parts[0])
    shards = _number("SHARDS", 1, big=True)(parts[1])
    size = _number("BYTES", 0, big=True)(parts[2]) if len(parts) == 3 else None
    return samples, shards, size


def _parser() -> _Parser:
    p = _Parser(
        prog="python -m vit_dist.data.plan",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=COST_MODEL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("dataset", nargs="?", metavar="DATASET_DIR", help="a directory with dataset.json")
    src.add_argument(
        "--simulate",
        type=_simulated,
        metavar="SAMPLES:SHARDS[:BYTES]",
        help="plan a split that does not exist: SAMPLES in SHARDS even shards of BYTES in all (e.g. 1281167:40:40e9)",
    )
    p.add_argument(
        "--split", default="train", help="split of dataset.json (default train; others: no shuffle)"
    )
    p.add_argument("--world-size", type=_number("--world-size", 1), required=True, help="ranks (GPUs)")
    p.add_argument("--workers", type=_number("--workers", 0), required=True, help="loader workers per rank")
    p.add_argument("--batch-size", type=_number("--batch-size", 1), required=True, help="per rank")
    p.add_argument("--mode", choices=("exact", "resampled"), default="exact")
    p.add_argument("--samples-per-epoch", type=_number("--samples-per-epoch", 1, big=True), help="resampled")
    p.add_argument(
        "--shuffle-buffer",
        type=_number("--shuffle-buffer", 0),
        help="samples per stream (default 1000 for train, 0 for other splits, as the trainer)",
    )
    p.add_argument("--seed", type=_number("--seed", 0), default=0, help="train.seed (default 0)")
    p.add_argument("--epoch", type=_number("--epoch", 0), default=0, help="the epoch planned (default 0)")
    idx = p.add_mutually_exclusive_group()
    idx.add_argument("--no-index", action="store_true", help="stream through every shard (see below)")
    idx.add_argument("--assume-index", action="store_true", help="seek in every shard (see below)")
    r = p.add_argument_group("resume: re-plan the rest of an interrupted epoch")
    r.add_argument("--resume-from-world-size", type=_number("--resume-from-world-size", 1), metavar="R0")
    r.add_argument("--at-batch", type=_number("--at-batch", 0), metavar="K", help="batches per rank consumed")
    r.add_argument("--resume-from-workers", type=_number("--resume-from-workers", 0), metavar="W0")
    r.add_argument("--resume-from-batch-size", type=_number("--resume-from-batch-size", 1), metavar="B0")
    r.add_argument(
        "--resume-from-shuffle-buffer", type=_number("--resume-from-shuffle-buffer", 0), metavar="S0"
    )
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p


def _fit_workers(a, split: SplitBytes, index: str, train: bool) -> tuple[int, str]:
    """The loader workers an exact-mode loader really uses (``pipeline.fit_workers``)."""
    seekable = [split.seeks(i, index) for i in range(len(split.sizes))]
    return fit_workers(split.sizes, seekable, a.world_size, a.workers, a.batch_size, train=train)


def _size(n: int, known: bool) -> str:
    if not known:
        return f"{n:,} samples"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _history(a, workers: int, shuffle_buffer: int) -> tuple[tuple[Segment, ...], Segment | None]:
    """(the history the re-plan starts from, the new settings' own segment at K batches)."""
    if (a.resume_from_world_size is None) != (a.at_batch is None):
        raise ConfigError(
            "--resume-from-world-size and --at-batch go together (the checkpoint's ranks and batch)"
        )
    if a.at_batch is None:
        for name in ("resume_from_workers", "resume_from_batch_size", "resume_from_shuffle_buffer"):
            if getattr(a, name) is not None:
                raise ConfigError(f"--{name.replace('_', '-')} needs --resume-from-world-size and --at-batch")
        return (), None
    old = Segment(
        a.resume_from_world_size,
        max(1, workers if a.resume_from_workers is None else a.resume_from_workers),
        a.batch_size if a.resume_from_batch_size is None else a.resume_from_batch_size,
        shuffle_buffer if a.resume_from_shuffle_buffer is None else a.resume_from_shuffle_buffer,
        a.at_batch,
    )
    new = Segment(a.world_size, max(1, workers), a.batch_size, shuffle_buffer, a.at_batch)
    return (old,), new


def plan(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, print the plan; returns the JSON figures."""
    a = _parser().parse_args(argv)
    train = a.split == "train"
    if a.mode == "resampled" and not train:
        raise DataError("evaluation data must use mode='exact' (exactly-once evaluation): use --split train")
    if a.mode == "resampled" and a.samples_per_epoch is None:
        raise ConfigError("--mode resampled needs --samples-per-epoch (the epoch length)")
    if a.mode == "exact" and a.samples_per_epoch is not None:
        raise ConfigError("--samples-per-epoch is for --mode resampled")
    buffer = a.shuffle_buffer if a.shuffle_buffer is not None else (1000 if train else 0)
    if a.simulate is not None:
        samples, shards, size = a.simulate
        split = uniform_split(samples, shards, size)
        source = "simulated split (even shards)"
    else:
        split = split_from_meta(a.dataset, a.split)  # --no-index too: offsets make the estimate exact
        source = f"split {a.split!r} of {a.dataset}"
    index = "none" if a.no_index else "assume" if a.assume_index else "auto"
    n = sum(split.sizes)
    print(
        f"{source}: {n:,} samples in {len(split.sizes):,} shards, {_size(split.total(), split.bytes_known)}"
    )
    if split.unusable:
        name, why = next(iter(split.unusable.items()))
        print(
            f"  {len(split.unusable)} index(es) the loader would not use (shard streamed through), e.g. {name}: {why}"
        )
    workers, why = _fit_workers(a, split, index, train) if a.mode == "exact" else (a.workers, "")
    if workers != a.workers:
        print(f"data.workers={a.workers} capped to {workers} as the loader does: {why}")
    history, same = _history(a, workers, buffer)
    # A checkpoint with the new settings is resumed by skipping its batches, not re-planned.
    replan = bool(history) and history[0] != same
    kw = dict(
        seed=a.seed, epoch=a.epoch, world_size=a.world_size, num_workers=workers, batch_size=a.batch_size
    )
    streams = a.world_size * max(1, workers)
    head = f"{a.world_size:,} ranks x {max(1, workers)} workers = {streams:,} streams, batch {a.batch_size}"
    fig: ExactFigures | ResampledFigures
    if a.mode == "exact":
        fig = exact_figures(split, shuffle=train, history=history if replan else (), index=index, **kw)
        print(f"exact epoch {a.epoch} (seed {a.seed}, {'shuffled' if train else 'in order'}): {head}")
        left = _resume_lines(a, history, replan, fig.batches_per_rank, fig.samples)
        _print_exact(fig, split)
    else:
        fig = resampled_figures(
            split,
            samples_per_epoch=a.samples_per_epoch,
            shuffle_buffer=buffer,
            history=history if replan else (),
            index=index,
            **kw,
        )
        print(f"resampled epoch {a.epoch} (seed {a.seed}): {head}, {a.samples_per_epoch:,} samples per epoch")
        left = _resume_lines(a, history, replan, fig.batches_per_rank, fig.samples_emitted)
        _print_resampled(fig, buffer)
    out = {
        "mode": a.mode,
        "split": a.split,
        "source": "simulate" if a.simulate is not None else str(a.dataset),
        "seed": a.seed,
        "epoch": a.epoch,
        "shuffle_buffer": buffer,
        **fig.as_dict(),
        "resume": left,
    }
    if a.json:
        print(json.dumps(out))
    return out


def _resume_lines(a, history: tuple[Segment, ...], replan: bool, batches: int, samples: int) -> dict | None:
    """Print what a resume does; -> its JSON (None without --at-batch)."""
    if not history:
        return None
    old = history[0]
    was = (
        f"after {old.batches} batches per rank at {old.world_size} ranks x {old.num_streams} workers, "
        f"batch {old.batch_size}, shuffle buffer {old.shuffle_buffer}"
    )
    if replan:
        print(f"re-plan: the rest of the epoch {was}: {samples:,} samples left, {batches} batches per rank")
        if batches == 0 and samples == 0:
            print("  fewer samples left than streams: the loader ends the epoch there (logged)")
        return {
            "replanned": True,
            "from": asdict(old),
            "samples_left": samples,
            "batches_left_per_rank": batches,
        }
    if old.batches > batches:
        raise DataError(f"resume position {old.batches} is outside the epoch of {batches} batches")
    print(
        f"resume {was}: the same settings, so no re-plan: the loader skips those batches (reading "
        f"through them); {batches - old.batches} of {batches} batches per rank left. Figures: the whole epoch"
    )
    return {"replanned": False, "from": asdict(old), "batches_left_per_rank": batches - old.batches}


def _print_exact(f, split: SplitBytes) -> None:
    known = f.bytes_known
    k = f.batches_per_rank // f.workers
    print(f"samples per stream: {f.samples_per_stream_min:,} .. {f.samples_per_stream_max:,}")
    print(f"batches per rank: {f.batches_per_rank:,} ({f.workers} workers x {k:,})")
    slots = f.streams * k * f.batch_size
    share = f" ({100 * f.padded_samples / slots:.2f}% of the batch rows)" if slots else ""
    print(f"padded samples: {f.padded_samples:,}{share}")
    print(
        f"streams per shard: up to {f.streams_per_shard_max}; shards per stream: up to {f.shards_per_stream_max}"
    )
    print(
        f"bytes read per stream: {_size(f.bytes_per_stream_min, known)} .. {_size(f.bytes_per_stream_max, known)}; "
        f"in total {_size(f.bytes_read, known)}"
    )
    model = {
        "auto": f"seek in the {f.shards_indexed} of {f.shards} shards with an index, stream through the rest",
        "none": "--no-index: stream through every shard",
        "assume": "--assume-index: seek in every shard",
    }[f.index]
    print(f"read amplification: {f.read_amplification:.4f} ({model})")
    print(
        f"  seeking in every shard (index): {f.read_amplification_index:.4f}; streaming through every shard: "
        f"{f.read_amplification_no_index:.4f}"
    )
    print(f"planned in {f.plan_seconds:.2f} s")


def _print_resampled(f, buffer: int) -> None:
    known = f.bytes_known
    print(
        f"batches per rank: {f.batches_per_rank:,} ({f.batches_per_worker_min:,} .. {f.batches_per_worker_max:,} per worker)"
    )
    print(
        f"samples emitted: {f.samples_emitted:,}; expected repeats of a sample per epoch: {f.expected_repeats:.4f}; "
        f"read: {f.samples_read:,} (shuffle buffers of {buffer} hold the rest)"
    )
    print(
        f"shards drawn per stream: {f.shards_drawn_per_stream_min} .. {f.shards_drawn_per_stream_max} "
        f"({f.shards_drawn:,} draws; {f.shards_never_drawn:,} of {f.shards:,} shards never drawn; "
        f"{100 * f.coverage:.2f}% of the samples read at least once)"
    )
    print(
        f"bytes read per stream: {_size(f.bytes_per_stream_min, known)} .. {_size(f.bytes_per_stream_max, known)}; "
        f"in total {_size(f.bytes_read, known)}"
    )
    print(f"read amplification: {f.read_amplification:.4f}")
    print(
        f"  seeking to each draw's random start (index): {f.read_amplification_index:.4f}; streaming through "
        f"to it: {f.read_amplification_no_index:.4f}"
    )
    print(f"planned in {f.plan_seconds:.2f} s")


def main(argv: list[str] | None = None) -> int:
    plan(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
