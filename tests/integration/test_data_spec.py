"""Shard specs: names read from a data directory are files inside it, never commands or URLs."""

from __future__ import annotations

from support.data_spec import _read_every_shard

from vit_dist.data.spec import resolve_shards
from vit_dist.data.tar_reader import BadSample


def test_a_typed_pipe_spec_still_runs_its_command(make_data_shards):
    shards = make_data_shards([3, 4])
    spec = f"pipe:cat {shards}/train-{{000000..000001}}.tar"
    resolved = resolve_shards(spec)
    assert resolved.urls == [f"pipe:cat {shards}/train-00000{i}.tar" for i in (0, 1)]
    samples = _read_every_shard(spec)
    assert len(samples) == 7 and not any(isinstance(s, BadSample) for s in samples)
