"""Byte-offset shard indexes: the format, hostile index files, the writer's and ``--index``'s
indexes, and exact epochs with fewer shards than streams that seek instead of streaming through."""

from __future__ import annotations

import logging
import os
from collections import Counter

import pytest
from support.data_index import _data, _streams, _valid

from vit_dist.data import DataConfig, ShardLoader
from vit_dist.data.writers import index_shards

# ---------------------------------------------------------------- the format


# ---------------------------------------------------------------- writers and --index


# ---------------------------------------------------------------- exact epochs, fewer shards than streams


def test_a_pipe_url_streams_through_the_indexed_shards(make_data_shards, caplog):
    shards = make_data_shards([10, 10])
    index_shards(shards)
    spec = "pipe:cat " + str(shards / "train-{000000..000001}.tar")
    cfg = DataConfig(spec, data=_data(meta=str(shards), workers=2), training=False, batch_size=4)
    with caplog.at_level(logging.INFO, logger="vit_dist.data"):
        per_rank = [_streams(ShardLoader(cfg, rank=r, world_size=2)) for r in range(2)]
    keys = [k for streams in per_rank for b in streams for k in _valid(b)]
    assert sorted(keys) == sorted(f"s{s}_{i}" for s in range(2) for i in range(10))
    assert "(0 indexed)" in caplog.text and "loader workers capped" not in caplog.text


def test_resume_and_replan_with_fewer_shards_than_streams(make_data_shards):
    sizes = [41, 30]
    shards = make_data_shards(sizes)
    index_shards(shards)
    cfg = lambda workers: DataConfig(str(shards), data=_data(workers=workers, shuffle_buffer=8), batch_size=4)
    make = lambda world, rank, workers: ShardLoader(cfg(workers), rank=rank, world_size=world)
    # same settings: the rest of the same batches
    full = list(make(2, 1, 3))
    first = make(2, 1, 3)
    it = iter(first)
    head = [next(it) for _ in range(4)]
    resumed = make(2, 1, 3)
    resumed.load_state_dict(first.state_dict())
    assert [b["key"] for b in head + list(resumed)] == [b["key"] for b in full]
    # 2 ranks x 3 workers -> 3 ranks x 2 workers mid-epoch: every sample once
    firsts = [make(2, r, 3) for r in range(2)]
    its = [iter(lo) for lo in firsts]
    seen = _valid([next(it) for it in its for _ in range(4)])
    state = firsts[0].state_dict()
    for r in range(3):
        lo = make(3, r, 2)
        lo.load_state_dict(state, counters=False)
        seen += _valid(list(lo))
    assert Counter(seen) == Counter(f"s{s}_{i}" for s, n in enumerate(sizes) for i in range(n))


# ---------------------------------------------------------------- http(s) shards: byte ranges


class _Server:
    """A local HTTP server of ``root`` that answers Range requests (unless ``ranges=False``, like
    a server without range support) and counts the bytes it sends."""

    def __init__(self, root, ranges=True):
        import http.server
        import threading

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                data = (root / self.path.lstrip("/")).read_bytes()
                wanted = self.headers.get("Range")
                if ranges and wanted:
                    lo, hi = (int(x) for x in wanted.removeprefix("bytes=").split("-"))
                    body = data[lo : hi + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                server.sent += len(body)

            def log_message(self, *a):
                pass

        self.sent = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("ranges", [True, False])
def test_http_shards_with_an_index_are_read_by_byte_ranges(make_data_shards, caplog, ranges):
    sizes = [30, 21]
    shards = make_data_shards(sizes)
    index_shards(shards)  # the meta directory: dataset.json and the indexes
    split_bytes = sum(os.path.getsize(shards / f"train-{s:06d}.tar") for s in range(2))
    server = _Server(shards, ranges=ranges)
    try:
        spec = server.url + "/train-{000000..000001}.tar"
        cfg = DataConfig(spec, data=_data(meta=str(shards), workers=3, shuffle_buffer=8), batch_size=4)
        with caplog.at_level(logging.INFO, logger="vit_dist.data"):
            per_rank = [_streams(ShardLoader(cfg, rank=r, world_size=2)) for r in range(2)]
    finally:
        server.close()
    keys = [k for streams in per_rank for b in streams for k in _valid(b)]
    assert Counter(keys) == Counter(f"s{s}_{i}" for s, n in enumerate(sizes) for i in range(n))
    assert "(2 indexed), 2 ranks x 3 loader workers = 6 streams; read amplification 1.00" in caplog.text
    if ranges:
        assert server.sent <= split_bytes and "byte-range request" not in caplog.text
    else:  # a server without range support: one warning per shard, then streamed, never wrong data
        assert server.sent > 1.3 * split_bytes
        warned = [r for r in caplog.records if "answered a byte-range request with 200" in r.getMessage()]
        assert len(warned) == 2
