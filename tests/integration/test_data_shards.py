"""Shard writers: folder and digits round trips, dataset.json, atomic and non-clobbering writes."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from support.data_shards import _add_unrelated_files, _assert_clean, _assert_one_complete_data_set

from vit_dist.core.errors import DataError
from vit_dist.data import shards as shards_cli
from vit_dist.data import writers as shards_mod


def test_existing_output_needs_overwrite(folder, tmp_path):
    out = tmp_path / "out"
    shards_mod.write_shards(str(folder), out, shard_samples=100, progress=False)
    with pytest.raises(DataError, match="already holds shards.*--overwrite"):
        shards_mod.write_shards(str(folder), out, shard_samples=100, progress=False)
    assert shards_cli.main(["--from-folder", str(folder), "--out", str(out)]) == 2
    assert (
        shards_cli.main(["--from-folder", str(folder), "--out", str(out), "--overwrite", "--workers", "2"])
        == 0
    )


KILLER = """
import os, signal, sys
from vit_dist.data import writers

real_add, calls = writers._ShardSink.add, []

def dying_add(self, *a):
    calls.append(1)
    if len(calls) == 6:
        os.kill(os.getpid(), signal.SIGKILL)  # no handler, no finally: a real kill
    return real_add(self, *a)

writers._ShardSink.add = dying_add
writers.write_shards(sys.argv[1], sys.argv[2], shard_samples=6, overwrite=True, progress=False)
"""


def test_a_sigkilled_overwrite_leaves_the_old_data_set_and_the_next_run_clears_up(folder, tmp_path):
    out = tmp_path / "out"
    shards_mod.write_shards(str(folder), out, shard_samples=4, progress=False)
    _add_unrelated_files(out)
    killed = subprocess.run([sys.executable, "-c", KILLER, str(folder), str(out)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert _assert_one_complete_data_set(out) == 4  # the old data set, untouched
    assert list(out.glob(".vit_dist-staging-*"))  # what the killed writer left
    shards_mod.write_shards(str(folder), out, shard_samples=6, progress=False, overwrite=True)
    assert _assert_one_complete_data_set(out) == 3
    _assert_clean(out)
