"""Monitoring (#17): W&B system metrics and the best/last summary, the TensorBoard writer, and the
curves figure, each read back with the libraries' own readers: wandb's protobuf records of the
offline ``.wandb`` file, tensorboard's ``EventAccumulator``, matplotlib's figure objects.

W&B runs offline in the sandbox of test_metrics (no key, a dead base URL, files in tmp_path).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from metrics_helpers import eval_record, make_logger, train_record, wandb_sandbox  # noqa: F401  (autouse)

from vit_dist.metrics.wandb_sink import FINISH_TIMEOUT_S, WandbSink

# ------------------------------------------------------------------ readers


def wandb_records(run_dir: str | Path) -> list:
    """The records of a W&B run file, parsed with wandb's own protobuf ``Record``.

    The file is wandb's LevelDB-style log: a 7-byte header (":W&B", magic, version), then
    32 KiB blocks of chunks (CRC-32C, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    path = next(Path(run_dir).glob("run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, payloads, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
    return [wandb_internal_pb2.Record.FromString(p) for p in payloads]


def wandb_summary(records: list) -> dict:
    """The run's final summary: the last value of each key over its summary records."""
    out = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def finished_wandb_file(lg, needle: bytes) -> list:
    """Finish ``lg`` and read its run file once wandb-core (a separate process) flushed ``needle``."""
    run_dir = lg.wandb_run_dir
    lg.finish(None)
    log_file = next(Path(run_dir).glob("run-*.wandb"))
    deadline = time.monotonic() + 30
    while needle not in log_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    return wandb_records(run_dir)


# ------------------------------------------------------------------ W&B


def test_wandb_system_metrics_sampled_and_best_in_summary(tmp_path):
    out = tmp_path / "on"
    lg = make_logger(out, wandb_enabled=True, system_metrics_interval=0.2)
    settings = lg.sink(WandbSink).run.settings
    assert settings.x_disable_stats is False and settings.x_stats_sampling_interval == 0.2
    # The sampler runs in wandb's service process; finish waits for that process at most this long.
    assert settings.finish_timeout == FINISH_TIMEOUT_S and settings.init_timeout == 30.0
    for step, top1 in ((10, 0.6), (20, 0.7), (30, 0.7), (40, 0.65)):
        lg.log_train(train_record(step))
        lg.log_eval(eval_record(step, top1=top1, top5=top1 + 0.2))
    time.sleep(1.0)  # a few sampling intervals
    records = finished_wandb_file(lg, b"best/step")
    stats = [r.stats for r in records if r.WhichOneof("record_type") == "stats"]
    keys = {item.key for s in stats for item in s.item}
    # W&B shows these as system/cpu, system/memory_percent, ... (system.* in its API).
    assert len(stats) >= 2 and {"cpu", "memory_percent"} <= keys, keys
    summary = wandb_summary(records)
    # The best (the earliest of two equal top-1s) beside the last values W&B keeps itself.
    assert summary["best/eval_top1"] == 0.7 and summary["best/step"] == 20
    assert summary["best/eval_top5"] == pytest.approx(0.9)
    assert summary["eval/top1"] == 0.65 and summary["train/loss"] == pytest.approx(2.0 / 40)

    lg = make_logger(tmp_path / "off", wandb_enabled=True, system_metrics=False, system_metrics_interval=0.2)
    assert lg.sink(WandbSink).run.settings.x_disable_stats is True
    lg.log_train(train_record(1))
    lg.log_eval(eval_record(1))
    time.sleep(1.0)
    records = finished_wandb_file(lg, b"best/step")
    assert not [r for r in records if r.WhichOneof("record_type") == "stats"]
    assert wandb_summary(records)["best/step"] == 1


# ------------------------------------------------------------------ summary.json, resume records


# ------------------------------------------------------------------ TensorBoard


# ------------------------------------------------------------------ curves


# ------------------------------------------------------------------ end to end
