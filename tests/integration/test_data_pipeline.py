"""The streaming loader end to end on small real-digit shards: split, epochs, resume, bad input."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tarfile
from collections import Counter

import pytest
import torch
from support.data_pipeline import UNEVEN, _cfg, _corrupt, _epoch, _valid_keys

from vit_dist.core.config import AugmentSection, DataSection
from vit_dist.data import DataConfig, DataError, ShardLoader, resolve_shards


def test_exact_two_ranks_two_workers_every_sample_once_equal_batches(make_data_shards):
    shards = make_data_shards(UNEVEN)
    loaders = [ShardLoader(_cfg(shards), rank=r, world_size=2) for r in range(2)]
    orders = {}
    for epoch in (0, 1):
        per_rank = [_epoch(loader, epoch) for loader in loaders]
        assert [len(b) for b in per_rank] == [len(loaders[0])] * 2  # equal batch counts: no hang
        for batches in per_rank:
            for b in batches:
                assert b["image"].shape == (8, 3, 16, 16) and b["image"].dtype == torch.float32
                assert b["label"].dtype == torch.int64 and b["valid"].dtype == torch.bool
        keys = _valid_keys(per_rank[0]) + _valid_keys(per_rank[1])
        assert Counter(keys) == Counter(f"s{s}_{i}" for s, n in enumerate(UNEVEN) for i in range(n))
        orders[epoch] = keys
    assert orders[0] != orders[1]  # a new epoch, a new order
    assert _valid_keys(_epoch(loaders[0], 0)) == orders[0][: len(_valid_keys(_epoch(loaders[0], 0)))]
    assert loaders[0].bad_samples == 0


def test_same_seed_and_epoch_give_the_same_batches(make_data_shards):
    shards = make_data_shards(UNEVEN)
    a, b = (_epoch(ShardLoader(_cfg(shards, workers=1)), 3) for _ in range(2))
    assert [x["key"] for x in a] == [y["key"] for y in b]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))  # augmentation too


def test_resampled_mode_yields_the_set_epoch_length(make_data_shards):
    shards = make_data_shards([10, 10, 10])  # fewer shards than streams is fine here
    cfg = _cfg(shards, mode="resampled", samples_per_epoch=96)
    per_rank = [_epoch(ShardLoader(cfg, rank=r, world_size=2), 0) for r in range(2)]
    assert [len(b) for b in per_rank] == [6, 6]
    assert sum(int(b["valid"].sum()) for batches in per_rank for b in batches) == 96


@pytest.mark.parametrize("workers,mode", [(0, "exact"), (2, "exact"), (2, "resampled")])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(make_data_shards, workers, mode):
    shards = make_data_shards(UNEVEN)
    make = lambda n_workers: ShardLoader(
        _cfg(shards, workers=n_workers, mode=mode, samples_per_epoch=150), rank=1, world_size=2
    )
    full = _epoch(make(workers), 2)
    k = 3
    first = make(workers)
    first.set_epoch(2)
    it = iter(first)
    for _ in range(k):
        next(it)
    state = first.state_dict()  # what a checkpoint taken after k training steps stores
    assert (state["epoch"], state["batch"]) == (2, k)
    resumed = make(workers)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest = list(resumed)
    assert len(full) > k + 2 and len(rest) == len(full) - k
    assert [b["key"] for b in rest] == [b["key"] for b in full[k:]]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(rest, full[k:]))  # same augmentation
    assert resumed.state_dict()["batch"] == len(full)
    with pytest.raises(DataError, match=r"drawn with train.seed=0 \(now 1\); set train.seed=0 to resume"):
        ShardLoader(_cfg(shards, workers=workers, seed=1, mode=mode, samples_per_epoch=150)).load_state_dict(
            state
        )


def _take(loader, state, n=None):
    """Resume ``loader`` from ``state`` and consume ``n`` batches (all when None)."""
    loader.load_state_dict(state, counters=False)
    loader.set_epoch(state["epoch"])
    left = loader.batches_left()
    it = iter(loader)
    batches = list(it) if n is None else [next(it) for _ in range(n)]
    if n is None:
        assert len(batches) == left
    return batches, loader.state_dict()


def test_replan_for_other_world_size_workers_and_batch_sees_every_sample_once(make_data_shards, caplog):
    # 2 ranks x 2 workers, batch 8 -> 3 ranks x 1 worker, batch 5 -> 1 rank in the main process,
    # batch 4: the interrupted epoch is finished, every sample exactly once (shuffle buffers too).
    shards = make_data_shards(UNEVEN)
    first = [ShardLoader(_cfg(shards), rank=r, world_size=2) for r in range(2)]
    for lo in first:
        lo.set_epoch(1)
    its = [iter(lo) for lo in first]
    seen = _valid_keys([next(it) for it in its for _ in range(3)])
    state = first[0].state_dict()
    assert state["batch"] == 3 and state["segments"] == []

    with caplog.at_level(logging.WARNING, logger="vit_dist.data"):
        second = [ShardLoader(_cfg(shards, workers=1, batch_size=5), rank=r, world_size=3) for r in range(3)]
        left = [lo.load_state_dict(state, counters=False) or lo.batches_left() for lo in second]
        parts = [_take(lo, state, 2) for lo in second]
    assert "epoch 1 re-planned for world size 3, 1 stream(s) per rank, batch 5" in caplog.text
    assert f"{123 - 2 * 3 * 8} samples of it are left" in caplog.text
    assert left == [left[0]] * 3 and left[0] > 2  # the same batches left on every rank: no hang
    seen += _valid_keys([b for batches, _ in parts for b in batches])
    state2 = parts[0][1]
    assert state2["batch"] == 2 and len(state2["segments"]) == 1

    last = ShardLoader(_cfg(shards, workers=0, batch_size=4))
    rest, final = _take(last, state2)
    assert final["batch"] == len(rest) > 0
    seen += _valid_keys(rest)
    assert Counter(seen) == Counter(f"s{s}_{i}" for s, n in enumerate(UNEVEN) for i in range(n))

    again, _ = _take(ShardLoader(_cfg(shards, workers=0, batch_size=4)), state2)
    assert [b["key"] for b in again] == [b["key"] for b in rest]  # deterministic, augmentation too
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(again, rest))
    # The next epoch is a whole, fresh one with the new settings.
    last.set_epoch(2)
    assert last.batches_left() == len(last) == 31


def test_replan_of_a_resampled_epoch_keeps_its_length(make_data_shards):
    shards = make_data_shards(UNEVEN)
    cfg = lambda **kw: _cfg(shards, mode="resampled", samples_per_epoch=150, **kw)
    first = ShardLoader(cfg(), rank=0, world_size=2)
    first.set_epoch(0)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    second = [ShardLoader(cfg(workers=1, batch_size=5), rank=r, world_size=3) for r in range(3)]
    rest = [_take(lo, state)[0] for lo in second]
    assert [len(r) for r in rest] == [math.ceil((150 - 2 * 3 * 8) / 15)] * 3


def test_bad_input_is_skipped_counted_and_never_hangs(make_data_shards, caplog):
    sizes = [6, 6, 6, 6, 6]
    shards = make_data_shards(sizes, edit=_corrupt)
    # shard 3: truncated after 2 full samples; shard 4: not a tar at all
    t3 = shards / "train-000003.tar"
    with tarfile.open(t3) as tf:
        cut = next(m for m in tf.getmembers() if m.name == "s3_2.jpg").offset_data + 10
    os.truncate(t3, cut)
    (shards / "train-000004.tar").write_bytes(b"this is not a tar file" * 40)
    expected_bad = 4 + (6 - 2) + 6
    cfg = _cfg(shards, batch_size=4, max_bad_fraction=1.0)
    loaders = [ShardLoader(cfg, rank=r, world_size=2) for r in range(2)]
    with caplog.at_level(logging.WARNING, logger="vit_dist.data"):
        per_rank = [_epoch(loader, 0) for loader in loaders]
    assert len(per_rank[0]) == len(per_rank[1]) == len(loaders[0])
    valid = sum(int(b["valid"].sum()) for batches in per_rank for b in batches)
    assert sum(loader.bad_samples for loader in loaders) == expected_bad
    assert sum(loader.samples_seen for loader in loaders) == sum(sizes)
    assert valid == sum(sizes) - expected_bad
    assert all(b["image"].shape == (4, 3, 16, 16) for batches in per_rank for b in batches)


def test_brace_and_pipe_specs_read_the_same_samples(make_data_shards):
    shards = make_data_shards([5, 7, 4])
    local = resolve_shards(str(shards / "train-{000000..000002}.tar"))
    assert local.sizes == [5, 7, 4] and local.classes is not None
    cfg = _cfg(
        "pipe:cat " + str(shards / "train-{000000..000002}.tar"), workers=0, meta=str(shards), training=False
    )
    batches = _epoch(ShardLoader(cfg), 0)
    assert sorted(_valid_keys(batches)) == sorted(
        f"s{s}_{i}" for s, n in enumerate([5, 7, 4]) for i in range(n)
    )


def test_resampled_mode_with_only_unreadable_shards_stops_instead_of_spinning(make_data_shards):
    shards = make_data_shards([4, 4])
    (shards / "train-000000.tar").write_bytes(b"garbage" * 100)
    with tarfile.open(shards / "train-000001.tar", "w"):
        pass  # an empty tar: no samples at all
    cfg = _cfg(shards, mode="resampled", samples_per_epoch=10_000, workers=1, bad_min_seen=10)
    with pytest.raises(DataError, match="bad samples"):
        _epoch(ShardLoader(cfg), 0)


@pytest.mark.timeout(60)
def test_a_stalled_shard_read_is_a_clear_error_not_a_hang(make_data_shards):
    shards = make_data_shards([4, 4])
    spec = "pipe:sleep 6; cat " + str(shards / "train-{000000..000001}.tar")
    cfg = _cfg(spec, workers=1, meta=str(shards), worker_timeout=1.5)
    with pytest.raises(DataError, match="no batch from the loader workers for 2 s"):
        _epoch(ShardLoader(cfg), 0)


def test_uncaught_error_with_live_workers_exits_instead_of_hanging(make_data_shards, tmp_path):
    # Workers ignore SIGTERM (so a preempted rank can save), and multiprocessing's exit hook only
    # SIGTERMs and then joins them: an exception that keeps a loader iterator alive until exit
    # (seen when a rank on another node died) must still end the process.
    import subprocess
    import sys

    shards = make_data_shards([40, 40])
    script = tmp_path / "crash.py"
    script.write_text(
        "from vit_dist.core.config import DataSection\n"
        "from vit_dist.data import DataConfig, ShardLoader\n"
        "if __name__ == '__main__':\n"
        f"    cfg = DataConfig({str(shards)!r}, data=DataSection(img_size=16, workers=2), batch_size=4)\n"
        "    it = iter(ShardLoader(cfg))\n"
        "    next(it)\n"
        "    raise RuntimeError('boom with live loader workers')\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "boom with live loader workers" in proc.stderr, proc.stderr[-2000:]


def test_start_methods_give_the_same_batches(make_data_shards):
    shards = make_data_shards([20, 13, 7])
    fork, server = (
        _epoch(ShardLoader(_cfg(shards, worker_start_method=m)), 1) for m in ("fork", "forkserver")
    )
    assert len(fork) == len(server) > 2 and [b["key"] for b in fork] == [b["key"] for b in server]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(fork, server))


def test_a_crashed_worker_is_a_clear_error_in_seconds_not_after_worker_timeout(make_data_shards, tmp_path):
    """A script without the __main__ guard under forkserver (what "auto" picks on CPython
    < 3.11.10): its workers die at start-up. torch would notice only after worker_timeout
    (600 s); the loader polls and says what to do."""
    import subprocess
    import sys

    shards = make_data_shards([40, 40])
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from vit_dist.core.config import DataSection\n"
        "from vit_dist.data import DataConfig, ShardLoader\n"
        f"cfg = DataConfig({str(shards)!r}, data=DataSection(img_size=16, workers=2), batch_size=4,\n"
        "                 worker_start_method='forkserver')\n"
        "next(iter(ShardLoader(cfg)))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    # WorkerDied: the DataError of a dead worker (the restart needs the samples it names: none here)
    assert proc.returncode == 1 and "WorkerDied: DataLoader worker" in last, proc.stderr[-3000:]
    assert "exited unexpectedly" in last and "if __name__ == '__main__':" in last, last


@pytest.mark.parametrize("train", [True, False])
def test_uint8_batches_normalised_on_the_device_equal_the_workers_floats(make_data_shards, train):
    shards = make_data_shards([20, 13])
    aug = AugmentSection(random_erasing=0.5)
    data = DataSection(img_size=16, workers=1, shuffle_buffer=16 if train else 0, normalize_on="worker")
    kw = dict(augment=aug, training=train, batch_size=8)
    floats = ShardLoader(DataConfig(str(shards), data=data, **kw))
    on_device = dataclasses.replace(data, normalize_on="device")
    uint8 = ShardLoader(DataConfig(str(shards), data=on_device, **kw))
    assert floats.cfg.normalize_in_workers and not uint8.cfg.normalize_in_workers
    a, b = _epoch(floats, 0), _epoch(uint8, 0)
    assert len(a) == len(b) == len(floats) and [x["key"] for x in a] == [y["key"] for y in b]
    erased = 0
    for x, y in zip(a, b):
        assert x["image"].dtype == torch.float32 and "erase" not in x
        assert y["image"].dtype == torch.uint8 and y["image"].shape == (8, 3, 16, 16)
        assert ("erase" in y) == train
        erased += int(y["erase"][:, 2].gt(0).sum()) if train else 0
        assert torch.equal(floats.images(x, "cpu"), x["image"])  # already floats: passed through
        assert torch.equal(uint8.images(y, "cpu"), x["image"])
    assert erased > 0 if train else erased == 0


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_workers_and_forkserver_end_when_their_process_is_killed(make_data_shards, tmp_path, method):
    """kill -9 (OOM killer) of a process with live workers leaves nothing behind. A forkserver
    worker's OS parent is the server, which lives as long as its children: without the workers'
    owner watch, both stayed forever, holding the job's output pipes (a test run hung on them)."""
    import signal
    import subprocess
    import sys
    import time

    shards = make_data_shards([40, 40])
    script = tmp_path / "killed.py"
    script.write_text(
        "import multiprocessing, time\n"
        "from multiprocessing import forkserver\n"
        "from vit_dist.core.config import DataSection\n"
        "from vit_dist.data import DataConfig, ShardLoader\n"
        "if __name__ == '__main__':\n"
        f"    cfg = DataConfig({str(shards)!r}, data=DataSection(img_size=16, workers=2), batch_size=4,\n"
        f"                     worker_start_method={method!r})\n"
        "    it = iter(ShardLoader(cfg))\n"
        "    next(it)\n"
        "    pids = [c.pid for c in multiprocessing.active_children()]\n"
        "    print(*pids, forkserver._forkserver._forkserver_pid or '', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(pids) >= 2 + (method == "forkserver"), pids  # 2 workers (+ the server)

    def alive(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 30  # torch's and our watch poll every few seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes of the killed loader still alive: {left}"


def test_replan_of_an_epoch_tail_smaller_than_the_streams_skips_it(make_data_shards, caplog):
    shards = make_data_shards(UNEVEN)
    first = ShardLoader(_cfg(shards, workers=1))
    _, state = _take(first, {**first.state_dict(), "batch": 0}, 15)  # 120 of 123 samples
    second = [ShardLoader(_cfg(shards), rank=r, world_size=2) for r in range(2)]  # 4 streams
    with caplog.at_level(logging.WARNING, logger="vit_dist.data"):
        for lo in second:
            lo.load_state_dict(state, counters=False)
    assert (
        "3 samples of it are left" in caplog.text
        and "fewer than the 4 streams, so they are skipped" in caplog.text
    )
    assert [lo.batches_left() for lo in second] == [0, 0] and [list(lo) for lo in second] == [[], []]
