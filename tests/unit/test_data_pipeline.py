"""The streaming loader end to end on small real-digit shards: split, epochs, resume, bad input."""

from __future__ import annotations

import logging

import pytest
import torch
from support.data_pipeline import UNEVEN, _cfg, _corrupt, _epoch, _valid_keys

from vit_dist.data import DataError, ShardLoader, resolve_shards


def test_loading_in_the_main_process_leaves_the_trainers_rng_alone(make_data_shards):
    loader = ShardLoader(_cfg(make_data_shards([9]), workers=0))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    _epoch(loader, 0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("indexed", [False, True])
def test_resampled_draws_start_at_a_random_sample_and_wrap_round(make_data_shards, indexed, caplog):
    """An epoch shorter than a shard must not always read the shards' first samples: each draw
    starts at a random sample (plan.resampled_start) and wraps round to the shard's start."""
    from vit_dist.data.index import index_shard

    shards = make_data_shards([60, 60])
    if indexed:
        for tar in sorted(shards.glob("*.tar")):
            index_shard(str(tar))
    with caplog.at_level(logging.INFO, logger="vit_dist.data"):
        loader = ShardLoader(_cfg(shards, mode="resampled", samples_per_epoch=8, workers=0, shuffle_buffer=0))
    hint = "2 of 2 shards have no usable index, so each draw of one streams through it"
    assert (hint in caplog.text) != indexed
    seen = set()
    for epoch in range(6):
        keys = _valid_keys(_epoch(loader, epoch))
        assert len(keys) == 8
        shard, first = (int(x) for x in keys[0][1:].split("_"))
        # one draw: 8 consecutive samples of one shard from a random start, wrapping at 60
        assert keys == [f"s{shard}_{(first + j) % 60}" for j in range(8)]
        seen.update(keys)
    assert max(int(k.split("_")[1]) for k in seen) >= 8  # not only the first 8 of each shard
    assert len(seen) > 8


def test_bad_sample_limit_stops_with_a_clear_error(make_data_shards):
    shards = make_data_shards([6, 6, 6, 6], edit=_corrupt)
    loader = ShardLoader(_cfg(shards, batch_size=4, workers=0, shuffle_buffer=0, bad_min_seen=10))
    with pytest.raises(DataError, match=r"bad samples of \d+ seen on rank 0 exceed max_bad_fraction=0.01"):
        _epoch(loader, 0)


def test_bad_sample_limit_is_on_the_whole_job_not_one_rank(make_data_shards):
    # 4 ranks, limit 1 %: rank 0 holds every bad sample (a few bad shards), 3 % of its own.
    loader = ShardLoader(_cfg(make_data_shards([5] * 8), bad_min_seen=100), rank=0, world_size=4)
    loader.samples_seen, loader.bad_samples = 1000, 30
    loader._check_bad_limit()  # 30 of ~4000 job-wide: 0.75 %, the run goes on
    loader.check_bad_fraction(30, 4000)
    loader.bad_samples = 41  # ~1.03 % of the job: this rank may stop it without waiting
    with pytest.raises(
        DataError, match=r"41 bad samples of 1000 seen on rank 0 \(about 4000 on all 4 ranks\)"
    ):
        loader._check_bad_limit()
    # Spread over the ranks, no rank alone trips it: the all-rank check at a log step does.
    loader.bad_samples = 11
    loader._check_bad_limit()
    with pytest.raises(
        DataError, match=r"44 bad samples of 4000 seen on all 4 ranks exceed max_bad_fraction=0.01"
    ):
        loader.check_bad_fraction(44, 4000)
    loader.check_bad_fraction(40, 4000)  # exactly at the limit is still fine
    loader.check_bad_fraction(1, 10)  # bad_min_seen: no verdict on the first few samples


def test_spec_errors_are_clear_at_start_up(make_data_shards, tmp_path):
    shards = make_data_shards([5, 5, 5])
    with pytest.raises(DataError, match="does not exist"):
        resolve_shards(str(shards / "train-{000000..000009}.tar"))
    with pytest.raises(DataError, match="matches no file"):
        resolve_shards(str(tmp_path / "nothing-*.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no dataset.json"):
        resolve_shards(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no split 'val'"):
        resolve_shards(str(shards), split="val")
    with pytest.raises(DataError, match="need per-shard sample counts"):
        ShardLoader(_cfg("pipe:cat " + str(shards / "train-{000000..000002}.tar"), workers=0))


def test_accelerate_prepare_leaves_the_loader_alone(make_data_shards):
    """prepare() re-shards DataLoaders (rank 0's batches to everyone); ours must pass through untouched."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    loader = ShardLoader(_cfg(make_data_shards([4, 4]), workers=0), rank=1, world_size=2)
    try:
        assert accelerate.Accelerator(cpu=True).prepare(loader) is loader
    finally:
        AcceleratorState._reset_state(True)  # the accelerator is a process-wide singleton


def test_auto_start_method_forks_only_where_cpython_forks_safely():
    from vit_dist.runtime.start import fork_is_safe, start_method

    affected = [(3, 10, 0), (3, 10, 14), (3, 11, 0), (3, 11, 7), (3, 11, 9)]
    fixed = [(3, 10, 15), (3, 11, 10), (3, 11, 14), (3, 12, 0), (3, 13, 1), (3, 14, 0)]
    assert not any(fork_is_safe(v) for v in affected) and all(fork_is_safe(v) for v in fixed)
    assert start_method("auto") == ("fork" if fork_is_safe() else "forkserver")
    assert start_method("spawn") == "spawn"


def test_read_runs_reads_scattered_samples_in_one_pass_and_counts_missing_ones(make_data_shards):
    from vit_dist.data.tar_reader import BadSample, read_runs

    url = str(make_data_shards([13]) / "train-000000.tar")
    keys = lambda items: [x["__key__"] if isinstance(x, dict) else x.key for x in items]
    assert keys(read_runs(url, [(0, 2), (5, 6), (10, None)])) == [
        "s0_0",
        "s0_1",
        "s0_5",
        "s0_10",
        "s0_11",
        "s0_12",
    ]
    got = list(read_runs(url, [(3, 4), (11, 16)]))  # the plan says 16 samples, the shard has 13
    assert keys(got[:3]) == ["s0_3", "s0_11", "s0_12"] and all(isinstance(x, dict) for x in got[:3])
    assert [x.key for x in got[3:]] == [f"{url}#{i}" for i in (13, 14, 15)]
    assert all(
        isinstance(x, BadSample) and "has 13 samples, fewer than the 16 planned" in x.reason for x in got[3:]
    )
    missing = list(read_runs(url + ".gone", [(0, 2), (7, 8)]))
    assert [x.key for x in missing] == [f"{url}.gone#{i}" for i in (0, 1, 7)]


def test_no_more_loader_streams_than_a_rank_has_batches(make_data_shards, caplog):
    """16 workers on 62 samples per rank (8 batches of 8) would make 16 streams of ~4 samples,
    each padded to a batch: half the epoch padding. The loader runs 8 workers, one batch each."""
    from vit_dist.data.pipeline import fit_workers

    shards = make_data_shards(UNEVEN)
    with caplog.at_level(logging.INFO, logger="vit_dist.data"):
        loaders = [ShardLoader(_cfg(shards, workers=16), rank=r, world_size=2) for r in range(2)]
    assert [lo.cfg.data.workers for lo in loaders] == [8, 8] and [len(lo) for lo in loaders] == [8, 8]
    assert "(data.workers=16 capped: a rank has 8 batch(es))" in caplog.text
    assert fit_workers(UNEVEN, None, 2, 4, 8, train=True) == (4, "")  # enough batches: untouched
    assert fit_workers(UNEVEN, None, 2, 0, 8, train=True) == (0, "")  # the main process stays
    assert fit_workers([10, 10], [False, False], 1, 8, 1, train=False)[0] == 2  # eval, no index: shards
    assert fit_workers([10, 10], [True, True], 1, 8, 1, train=False)[0] == 8  # eval, indexed: re-split


def test_a_resampled_streams_buffer_holds_at_most_what_it_emits(make_data_shards, monkeypatch):
    """8 samples an epoch through a 1,000-sample buffer would read 1,008 samples (17 shards of
    60) to use 8; the buffer is capped at what the stream emits, so one draw is read."""
    shards = make_data_shards([60, 60])
    loader = ShardLoader(_cfg(shards, mode="resampled", samples_per_epoch=8, workers=0, shuffle_buffer=1000))
    draws = []
    read_from = type(loader.dataset)._read_from
    monkeypatch.setattr(
        type(loader.dataset),
        "_read_from",
        lambda self, i, starts: draws.append(i) or read_from(self, i, starts),
    )
    assert len(_valid_keys(_epoch(loader, 0))) == 8
    assert len(draws) == 1


def test_prestart_starts_the_forkserver_only_where_workers_fork_from_one(monkeypatch):
    import multiprocessing.forkserver

    from vit_dist.runtime import start

    started = []
    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", lambda: started.append(True))
    start.prestart(0, "forkserver")  # the main process loads: no workers, no server
    start.prestart(2, "fork")
    assert started == []
    start.prestart(2, "forkserver")
    assert started == [True]
    # the server it starts preloads the pipeline (multiprocessing's one server of this process)
    assert multiprocessing.forkserver._forkserver._preload_modules == [start.FORKSERVER_PRELOAD]
    start.prestart(1, "auto")
    assert len(started) == (2 if start.start_method("auto") == "forkserver" else 1)


# ---------------------------------------------------------------- a dead loader worker


def test_worker_progress_names_the_sample_a_dead_worker_was_decoding(monkeypatch):
    from vit_dist.data.workers import WorkerProgress, worker_death_line

    progress = WorkerProgress(2)
    assert not progress.any_started()
    progress.started(0)  # this process plays worker 0 (its real pid) ...
    progress.decoding(0, "/data/train-000003.tar#s3_17")
    monkeypatch.setattr("os.getpid", lambda: 4242)
    progress.started(1)  # ... and "pid 4242" worker 1, which finished its last sample
    progress.decoding(1, "/data/train-000004.tar#s4_2")
    progress.done(1)
    pid0 = int(progress.pids[0])
    assert (
        progress.describe(pid0)
        == f"loader worker 0 (pid {pid0}) died while decoding /data/train-000003.tar#s3_17"
    )
    assert progress.describe(4242) == "loader worker 1 (pid 4242) died between samples"
    assert progress.describe(1) is None

    fork = f"DataLoader worker (pid {pid0}) is killed by signal: Segmentation fault. "
    assert worker_death_line(fork, "/data", "fork", progress) == (
        f"loader worker 0 (pid {pid0}) died while decoding /data/train-000003.tar#s3_17 (Segmentation fault) "
        "reading /data: a crash in a native library (an image decoder) or the out-of-memory killer ends "
        "a worker this way; its error, if any, is above"
    )
    # A forkserver worker that started: no __main__ hint, the sample instead.
    server = "DataLoader worker (pid(s) 4242) exited unexpectedly"
    assert worker_death_line(server, "/data", "forkserver", progress).startswith(
        "loader worker 1 (pid 4242) died between samples reading /data: a crash"
    )
    # No worker ever started under forkserver: a script without the __main__ guard.
    fresh = WorkerProgress(2)
    assert worker_death_line(server, "/data", "forkserver", fresh) == (
        f"{server} reading /data (its error is above; with the forkserver start method a script that "
        "trains must start from `if __name__ == '__main__':`)"
    )
    # A worker of another loader, under fork: what torch said, where.
    assert worker_death_line(fork.replace(str(pid0), "99"), "/data", "fork", fresh) == (
        "DataLoader worker (pid 99) is killed by signal: Segmentation fault. reading /data (its error, if "
        "any, is above)"
    )


def test_a_key_longer_than_the_slot_is_kept_by_its_end():
    from vit_dist.data.workers import WorkerProgress

    progress = WorkerProgress(1)
    progress.started(0)
    key = "/" + "d" * 500 + "/train-000001.tar#sample_9"
    progress.decoding(0, key)
    said = progress.describe(int(progress.pids[0]))
    assert said is not None and said.endswith(key[-WorkerProgress.KEY_BYTES :])


def test_too_many_workers_for_the_cores_is_said_once_in_our_words(make_data_shards, monkeypatch, caplog):
    """torch says it twice per process (building the DataLoader, starting its iterator); the
    shard loader says it once, naming data.workers and the usable cores, and silences torch's."""
    import warnings

    from torch.utils.data import DataLoader

    from vit_dist.data import pipeline
    from vit_dist.data.workers import torch_worker_count_quiet

    with warnings.catch_warnings(record=True) as loud:
        warnings.simplefilter("always")
        DataLoader(range(4), num_workers=512)  # no process starts until it is iterated
    assert any("worker processes in total" in str(w.message) for w in loud)  # torch's own text
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        with torch_worker_count_quiet():
            DataLoader(range(4), num_workers=512)
    assert not quiet

    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)
    monkeypatch.setattr(pipeline, "_worker_counts_warned", set())
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    shards = make_data_shards([40, 40, 40, 40])
    caplog.set_level(logging.WARNING, logger="vit_dist.data")
    for train in (True, False):  # the train and the val loader of one run
        ShardLoader(_cfg(shards, workers=4, training=train))
    said = [r.getMessage() for r in caplog.records if "usable CPU cores" in r.getMessage()]
    assert said == [
        "warning: data.workers=4 loader processes per rank x 1 local rank(s) on 2 usable CPU cores: "
        "they compete for the cores with each other and the training; at most 2 per rank fit"
    ]
    caplog.clear()
    ShardLoader(_cfg(shards, workers=2))  # fits: nothing said
    assert not [r for r in caplog.records if "usable CPU cores" in r.getMessage()]
