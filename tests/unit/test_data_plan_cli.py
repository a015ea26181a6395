"""The job planner (``python -m vit_dist.data.plan``, ``plan/simulate.py``): its figures against the
loader's own plan, resume and reads, without ever opening a shard."""

from __future__ import annotations

import itertools
import json
import random
import shutil
import time

import pytest

from vit_dist.cli.command import run_cli
from vit_dist.core.config import DataSection
from vit_dist.data import tar_reader
from vit_dist.data.index import index_shard, load_offsets
from vit_dist.data.pipeline import DataConfig, ShardLoader
from vit_dist.data.plan import (
    Segment,
    exact_plan,
    resampled_batches,
    resampled_shards,
    resampled_start,
    stream_seed,
)
from vit_dist.data.plan.__main__ import main
from vit_dist.data.plan.simulate import (
    all_stream_plans,
    exact_figures,
    resampled_figures,
    split_from_meta,
    uniform_split,
)

UNEVEN = [37, 5, 20, 13, 29, 1, 18]


def _plan(capsys, *argv) -> tuple[list[str], dict]:
    """Run the planner in-process with ``--json``: (its printed lines, the JSON of the last)."""
    assert main([*map(str, argv), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, json.loads(lines[-1])


def _fail(capsys, *argv) -> tuple[int, str]:
    code = run_cli(lambda: main(list(map(str, argv))))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "sizes,world,workers,batch,shuffle",
    [
        (UNEVEN, 2, 2, 8, True),
        (UNEVEN, 3, 5, 4, True),  # fewer shards than streams: streams share shards
        ([100] * 5 + [57], 4, 1, 64, False),
        ([3, 1, 1, 9, 4, 4, 2, 2], 1, 3, 1, True),
    ],
)
def test_all_stream_plans_equal_exact_plan_rank_by_rank(sizes, world, workers, batch, shuffle):
    kw = dict(seed=3, epoch=1, world_size=world, num_workers=workers, batch_size=batch, shuffle=shuffle)
    histories = [(), (Segment(world + 1, 2, batch + 1, 4 if shuffle else 0, 2),)]
    for history in histories:
        every = all_stream_plans(sizes, history=history, **kw)
        assert len(every) == world * workers
        for r in range(world):
            assert every[r * workers : (r + 1) * workers] == exact_plan(sizes, rank=r, history=history, **kw)


def test_cli_on_written_shards_matches_the_loader(digits_data_dir, capsys):
    lines, fig = _plan(capsys, digits_data_dir, "--world-size", 2, "--workers", 3, "--batch-size", 32)
    text = "\n".join(lines)
    meta = json.loads((digits_data_dir / "dataset.json").read_text())["splits"]["train"]
    sizes = [s["num_samples"] for s in meta["shards"]]
    assert fig["streams"] == 6 and fig["ranks"] == 2 and fig["workers"] == 3
    assert fig["split_samples"] == fig["samples"] == sum(sizes) == 1437
    assert (fig["samples_per_stream_min"], fig["samples_per_stream_max"]) == (1437 // 6, -(-1437 // 6))
    loader = ShardLoader(
        DataConfig(str(digits_data_dir), data=DataSection(workers=3), batch_size=32), rank=1, world_size=2
    )
    assert fig["batches_per_rank"] == len(loader) == 3 * -(-240 // 32)
    assert fig["padded_samples"] == 6 * 8 * 32 - 1437
    # The writer indexes every shard: the loader seeks, reading each sample's bytes once.
    assert fig["shards_indexed"] == fig["shards"] == len(sizes) and fig["index"] == "auto"
    assert fig["split_bytes"] == sum(s["num_bytes"] for s in meta["shards"])
    assert fig["read_amplification"] == fig["read_amplification_index"] < 1.0  # no tar end blocks
    assert fig["read_amplification_no_index"] > fig["read_amplification_index"]
    for word in (
        "streams",
        "samples per stream",
        "batches per rank",
        "padded samples",
        "bytes read per stream",
    ):
        assert word in text
    assert "read amplification: " in text
    # --no-index streams through every shard; --assume-index seeks in every one.
    _, none = _plan(
        capsys, digits_data_dir, "--world-size", 2, "--workers", 3, "--batch-size", 32, "--no-index"
    )
    assert none["index"] == "none" and none["read_amplification"] == fig["read_amplification_no_index"]
    _, assume = _plan(
        capsys, digits_data_dir, "--world-size", 2, "--workers", 3, "--batch-size", 32, "--assume-index"
    )
    assert assume["read_amplification"] == pytest.approx(fig["read_amplification_index"], rel=0.02)


class _Counting:
    """A file that counts the bytes read from it (in ``_Counting.total``)."""

    total = 0

    def __init__(self, fh):
        self.fh = fh

    def read(self, size=-1):
        data = self.fh.read(size)
        _Counting.total += len(data)
        return data

    def seek(self, *a):
        return self.fh.seek(*a)

    def tell(self):
        return self.fh.tell()

    def close(self):
        self.fh.close()


@pytest.mark.parametrize("seek", [True, False])
def test_planned_bytes_are_the_bytes_the_reader_reads(make_data_shards, monkeypatch, seek):
    shards = make_data_shards(UNEVEN)
    for p in sorted(shards.glob("*.tar")):
        index_shard(p)
    split = split_from_meta(shards, "train")  # the offsets make the planner's byte counts exact
    assert split.indexed() == len(UNEVEN)
    opened, _Counting.total = [], 0
    real_open = tar_reader._open_local

    def counting_open(path):
        opened.append(path)
        return _Counting(real_open(path))

    monkeypatch.setattr(tar_reader, "_open_local", counting_open)
    kw = dict(world_size=3, num_workers=4, batch_size=4, shuffle=True)
    fig = exact_figures(split, index="auto" if seek else "none", **kw)
    urls = [str(shards / f"train-{i:06d}.tar") for i in range(len(UNEVEN))]
    passes = 0
    for plan in all_stream_plans(split.sizes, seed=0, epoch=0, **kw):
        for shard, group in itertools.groupby(plan.slices, key=lambda s: s.shard):
            runs = [(s.start, s.stop) for s in group]
            offsets = load_offsets(urls[shard] + ".idx", urls[shard], UNEVEN[shard]) if seek else None
            list(tar_reader.read_runs(urls[shard], runs, count=UNEVEN[shard], offsets=offsets))
            passes += len(runs) if seek else 1
    assert len(opened) == passes
    if seek:
        assert _Counting.total == fig.bytes_read  # a seeked read is bounded to exactly its samples
    else:  # tarfile reads in records of 10240 bytes: a pass reads at most one past its need
        assert fig.bytes_read <= _Counting.total <= fig.bytes_read + passes * 10240
    assert fig.read_amplification == fig.bytes_read / sum(p.stat().st_size for p in shards.glob("*.tar"))


def test_resume_replan_matches_the_loaders_numbers(make_data_shards, capsys):
    shards = make_data_shards(UNEVEN)
    argv = [shards, "--world-size", 3, "--workers", 1, "--batch-size", 5, "--shuffle-buffer", 4, "--epoch", 1]
    resume = [
        "--resume-from-world-size",
        2,
        "--resume-from-workers",
        2,
        "--resume-from-batch-size",
        8,
        "--at-batch",
        3,
    ]
    lines, fig = _plan(capsys, *argv, *resume)
    state = {
        "epoch": 1,
        "batch": 3,
        "seed": 0,
        "world_size": 2,
        "workers": 2,
        "batch_size": 8,
        "shuffle_buffer": 4,
        "mode": "exact",
        "segments": [],
        "bad_samples": 0,
        "samples_seen": 0,
    }
    cfg = DataConfig(str(shards), data=DataSection(workers=1, shuffle_buffer=4), batch_size=5)
    plans = all_stream_plans(
        UNEVEN,
        seed=0,
        epoch=1,
        world_size=3,
        num_workers=1,
        batch_size=5,
        shuffle=True,
        history=(Segment(2, 2, 8, 4, 3),),
    )
    for r in range(3):
        loader = ShardLoader(cfg, rank=r, world_size=3)
        loader.load_state_dict(state, counters=False)
        assert fig["batches_per_rank"] == fig["resume"]["batches_left_per_rank"] == loader.batches_left()
        assert fig["samples"] == fig["resume"]["samples_left"] == loader._left_samples(1, loader._history)
        assert loader.dataset._exact_plans(1, loader._history) == plans[r : r + 1]
    assert fig["resume"]["replanned"] and fig["samples"] == sum(UNEVEN) - 2 * 3 * 8  # buffers' contents too
    assert any(
        line.startswith("re-plan: the rest of the epoch after 3 batches per rank at 2 ranks")
        for line in lines
    )
    # The checkpoint's own settings: no re-plan, the loader skips the consumed batches.
    _, same = _plan(
        capsys,
        shards,
        "--world-size",
        2,
        "--workers",
        2,
        "--batch-size",
        8,
        "--resume-from-world-size",
        2,
        "--at-batch",
        3,
    )
    assert not same["resume"]["replanned"]
    assert same["resume"]["batches_left_per_rank"] == same["batches_per_rank"] - 3


def test_resampled_resume_replan_matches_the_loader(make_data_shards, capsys):
    shards = make_data_shards(UNEVEN)
    argv = [shards, "--world-size", 3, "--workers", 1, "--batch-size", 5, "--mode", "resampled"]
    resume = ["--resume-from-world-size", 2, "--resume-from-workers", 2, "--resume-from-batch-size", 8]
    _, fig = _plan(capsys, *argv, "--samples-per-epoch", 150, *resume, "--at-batch", 3)
    state = {
        **dict(epoch=0, batch=3, seed=0, world_size=2, workers=2, batch_size=8, shuffle_buffer=1000),
        **dict(mode="resampled", segments=[], bad_samples=0, samples_seen=0),
    }
    cfg = DataConfig(
        str(shards), data=DataSection(workers=1, mode="resampled", samples_per_epoch=150), batch_size=5
    )
    loader = ShardLoader(cfg, rank=0, world_size=3)
    loader.load_state_dict(state, counters=False)
    assert fig["resume"]["replanned"] and fig["batches_per_rank"] == loader.batches_left() == -(
        -(150 - 48) // 15
    )


def test_evaluation_workers_are_capped_as_the_loader_caps_them(make_data_shards, capsys):
    shards = make_data_shards([30, 25], split="val")
    argv = [shards, "--split", "val", "--world-size", 1, "--workers", 8, "--batch-size", 4]
    loader = lambda: ShardLoader(
        DataConfig(str(shards), data=DataSection(workers=8), split="val", training=False, batch_size=4)
    )
    lines, fig = _plan(capsys, *argv)
    assert fig["workers"] == loader().cfg.data.workers == 2 and fig["shuffle_buffer"] == 0
    assert any(
        line.startswith("data.workers=8 capped to 2 as the loader does: without an index") for line in lines
    )
    assert fig["batches_per_rank"] == len(loader())
    for p in sorted(shards.glob("*.tar")):
        index_shard(p)
    _, fig = _plan(capsys, *argv)
    assert fig["workers"] == loader().cfg.data.workers == 8 and fig["batches_per_rank"] == len(loader())


def test_the_planner_never_opens_a_shard(digits_data_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(digits_data_dir, copy)
    argv = ["--world-size", 2, "--workers", 4, "--batch-size", 16]
    _, before = _plan(capsys, copy, *argv)
    tars = sorted(copy.glob("*.tar"))
    assert tars
    for t in tars:
        t.unlink()  # gone: any read of a shard would fail
    _, after = _plan(capsys, copy, *argv)
    before.pop("plan_seconds"), after.pop("plan_seconds")
    assert after == before and after["shards_indexed"] == after["shards"] > 0


def test_resampled_figures_at_4096_streams(capsys):
    argv = ["--simulate", "1000000:1000:1e11", "--world-size", 512, "--workers", 8, "--batch-size", 64]
    lines, fig = _plan(
        capsys, *argv, "--mode", "resampled", "--samples-per-epoch", 4e6, "--shuffle-buffer", 100
    )
    per_worker = resampled_batches(4_000_000, 512, 8, 64)
    assert fig["streams"] == 4096 and fig["batches_per_rank"] == sum(per_worker) == 123
    assert fig["samples_emitted"] == 512 * 123 * 64 >= 4_000_000
    assert fig["expected_repeats"] == pytest.approx(512 * 123 * 64 / 1e6)
    assert fig["samples_read"] == fig["samples_emitted"] + 4096 * 100  # what the buffers hold at the end
    # Equal shards of 1000: a stream draws ceil(what it reads / 1000) of them, whichever they are.
    draws = [-(-(b * 64 + 100) // 1000) for b in per_worker]
    assert fig["shards_drawn"] == 512 * sum(draws)
    assert (fig["shards_drawn_per_stream_min"], fig["shards_drawn_per_stream_max"]) == (
        min(draws),
        max(draws),
    )
    # 8192 draws of 1000 shards: each missed with probability (1 - 1/1000)**8192, about 0.03%.
    assert fig["shards_never_drawn"] < 5 and 0.9 < fig["coverage"] <= 1.0
    # Each drawn shard is read from a random sample on (plan.resampled_start), wrapping round: with
    # an index that costs exactly the samples read (1e5 bytes each); streaming through to the start
    # costs more.
    _, seeking = _plan(
        capsys,
        *argv,
        "--mode",
        "resampled",
        "--samples-per-epoch",
        4e6,
        "--shuffle-buffer",
        100,
        "--assume-index",
    )
    assert seeking["read_amplification"] == pytest.approx(fig["samples_read"] / 1e6)
    assert fig["read_amplification"] > 1.5 * seeking["read_amplification"]
    assert fig["padded_samples"] == 0
    assert any(line.startswith("shards drawn per stream: ") for line in lines)
    # The draws are the loader's own RNG's: another seed draws other shards.
    other = resampled_shards(1000, 1, 0, 7, 5, [1000] * 1000)
    assert [next(resampled_shards(1000, 0, 0, 7, 5, [1000] * 1000)) for _ in range(2)] != [
        next(other),
        next(other),
    ]


def test_resampled_figures_count_whole_shards_and_the_buffer():
    split = uniform_split(300, 3, 3000)  # 100 samples, 1000 bytes per shard
    fig = resampled_figures(
        split, world_size=1, num_workers=1, batch_size=10, samples_per_epoch=250, shuffle_buffer=20
    )
    assert fig.batches_per_rank == 25 and fig.samples_emitted == 250 and fig.samples_read == 270
    assert fig.shards_drawn == 3
    # Each draw starts at the loader's random sample k and wraps round: seeking, two whole shards and
    # 70 samples of a third; streaming through, a whole shard costs its file plus its first k samples
    # again, and the third draw costs from its start to the end of what it reads.
    seeking = resampled_figures(
        split,
        world_size=1,
        num_workers=1,
        batch_size=10,
        samples_per_epoch=250,
        shuffle_buffer=20,
        index="assume",
    )
    assert seeking.bytes_read == 2700 and seeking.coverage <= 1.0
    starts = random.Random(stream_seed("start", 0, 0, 0, 0))
    k1, k2, k3 = (resampled_start(starts, 100) for _ in range(3))
    third = (1000 + 10 * (k3 + 70 - 100)) if k3 + 70 > 100 else 10 * (k3 + 70)
    assert fig.bytes_read == (1000 + 10 * k1) + (1000 + 10 * k2) + third


def test_imagenet21k_at_4096_ranks_x_8_workers_plans_fast():
    split = uniform_split(14_197_122, 1420, 1_420_000_000_000)
    t0 = time.perf_counter()
    fig = exact_figures(split, world_size=4096, num_workers=8, batch_size=128, shuffle=True)
    seconds = time.perf_counter() - t0
    print(f"ImageNet-21k, 4096 ranks x 8 workers: planned in {seconds:.2f} s")
    assert seconds < 60
    assert fig.streams == 32768 and (fig.samples_per_stream_min, fig.samples_per_stream_max) == (433, 434)
    assert fig.batches_per_rank == 8 * 4 and fig.padded_samples == 32768 * 4 * 128 - 14_197_122
    assert fig.read_amplification_index == 1.0  # a seek per slice reads every byte once
    assert fig.read_amplification_no_index > 10  # ~23 streams share a shard, each reads from its start


def test_clear_one_line_errors(make_data_shards, tmp_path, capsys):
    shards = make_data_shards(UNEVEN)
    base = ["--world-size", 1, "--workers", 2, "--batch-size", 4]
    cases = [
        ((tmp_path / "nothing", *base), 3, "data error: no dataset.json in"),
        ((shards, "--split", "val", *base), 3, "has no split 'val' (it has: train)"),
        (
            (shards, "--world-size", "0", "--workers", 2, "--batch-size", 4),
            2,
            "--world-size must be a whole number >= 1",
        ),
        (
            (shards, "--world-size", 1, "--workers", 2, "--batch-size", "x"),
            2,
            "--batch-size must be a whole number",
        ),
        (("--simulate", "10:0", *base), 2, "SHARDS must be a whole number >= 1"),
        (("--simulate", "10", *base), 2, "--simulate takes SAMPLES:SHARDS[:BYTES]"),
        ((shards, *base, "--mode", "resampled"), 2, "needs --samples-per-epoch"),
        ((shards, *base, "--at-batch", 3), 2, "--resume-from-world-size and --at-batch go together"),
        (
            (shards, *base, "--resume-from-world-size", 1, "--at-batch", 999),
            3,
            "resume position 999 is outside",
        ),
        (
            (shards, *base, "--resume-from-world-size", 2, "--at-batch", 999),
            3,
            "resume position 999 is outside",
        ),
        (
            (shards, "--world-size", 1, "--workers", 2),
            2,
            "the following arguments are required: --batch-size",
        ),
    ]
    for argv, code, message in cases:
        got, err = _fail(capsys, *argv)
        assert (got, len(err.splitlines())) == (code, 1), (argv, err)
        assert message in err, (argv, err)
