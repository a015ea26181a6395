"""vit_dist.metrics: JSONL records, resume truncation, W&B offline/disabled paths, curves PNG,
non-main ranks, the plain progress lines, MFU, peak FLOP/s, peak memory and StepTimer.

No test may reach the network: W&B runs offline with its base URL pointed at a closed local
port and every W&B directory (config, cache, data) inside the test's tmp_path.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from metrics_helpers import eval_record, make_logger, train_record, wandb_sandbox  # noqa: F401  (autouse)
from support.metrics import read_jsonl

from vit_dist.metrics.wandb_sink import WandbSink

# ------------------------------------------------------------------ JSONL files


def test_jsonl_records_fields_and_final_eval(tmp_path):
    out = tmp_path / "run"
    lg = make_logger(out)
    for s in (1, 2, 3):
        lg.log_train(train_record(s, loss=torch.tensor(0.5 * s)))  # 0-d tensors are accepted
    # Flushed per record: readable before finish() (a crash keeps what was logged).
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert set(train_record(1)) <= set(rows[0])
    assert rows[2]["loss"] == pytest.approx(1.5) and rows[0]["world_size"] == 1

    lg.log_eval(eval_record(3, ema_top1=51.0))
    ev = read_jsonl(out / "eval.jsonl")
    assert ev == [eval_record(3, ema_top1=51.0)]

    final = eval_record(3, ema_top1=51.0)
    lg.finish(final)
    assert json.loads((out / "eval.json").read_text()) == final
    lg.log_train(train_record(4))  # after finish: ignored, not an error
    assert len(read_jsonl(out / "metrics.jsonl")) == 3


# ------------------------------------------------------------------ W&B


def test_wandb_offline_run_dir_and_resume_reuses_id(tmp_path, capsys):
    out = tmp_path / "run"
    lg = make_logger(out, wandb_enabled=True, config={"model": "probe_model_x7"})
    run_dir = Path(lg.wandb_run_dir)
    assert lg.wandb_mode == "offline"
    assert run_dir.is_dir() and run_dir.parent == out / "wandb" and run_dir.name.startswith("offline-run-")
    run_id = (out / "wandb_run_id.txt").read_text().strip()
    assert run_dir.name.endswith("-" + run_id) and len(run_id) >= 6
    for s in (1, 2, 3):
        lg.log_train(train_record(s))
    lg.log_eval(eval_record(3))
    lg.finish(eval_record(3))
    printed = capsys.readouterr().out
    assert f"wandb sync {run_dir}\n" in printed
    log_file = run_dir / f"run-{run_id}.wandb"
    # wandb-core (a separate process) may still be flushing the run file when finish() returns.
    deadline = time.monotonic() + 30
    while b"probe_model_x7" not in log_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"probe_model_x7" in log_file.read_bytes()  # the config went into the run

    # A resumed run continues the same W&B run in a new offline segment.
    lg2 = make_logger(out, wandb_enabled=True, start_step=3)
    assert lg2.wandb_run_dir != lg.wandb_run_dir
    # wandb names a segment offline-run-<second>-<id>; one started in the same second as the
    # previous segment gets a "-1" suffix from wandb (seen in CI when the first run was fast)
    assert re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", Path(lg2.wandb_run_dir).name)
    assert lg2.sink(WandbSink).run.id == run_id
    lg2.log_train(train_record(4))
    lg2.finish(None)
    printed = capsys.readouterr().out
    assert f"wandb sync {lg2.wandb_run_dir}\n" in printed
    assert f"wandb sync --id {run_id} {run_dir} {lg2.wandb_run_dir}" in printed
    assert (out / "wandb_run_id.txt").read_text().strip() == run_id


def test_wandb_disabled_never_imports_wandb(tmp_path):
    # A fresh interpreter: other tests in this process have imported wandb already.
    code = (
        "import sys; from vit_dist.core.config import LoggingSection; from vit_dist.metrics import RunLogger\n"
        f"lg = RunLogger.create({str(tmp_path / 'r')!r}, LoggingSection(wandb=False, progress='lines'), "
        "is_main=True, total_steps=2, config={})\n"
        "lg.log_train({'step': 1, 'loss': 1.0}); lg.finish(None)\n"
        "assert 'wandb' not in sys.modules, 'wandb imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_online_init_failure_falls_back_to_offline(tmp_path, monkeypatch, capsys):
    import wandb

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    real_init, modes = wandb.init, []

    def init(*args, mode=None, **kwargs):
        modes.append(mode)
        if mode == "online":  # stands in for an unreachable server; never goes out
            raise wandb.errors.CommError("server unreachable")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    lg = make_logger(tmp_path / "run", wandb_enabled=True, wandb_mode="auto")
    assert modes == ["online", "offline"]
    assert lg.wandb_mode == "offline" and Path(lg.wandb_run_dir).is_dir()
    lg.finish(None)
    out = capsys.readouterr().out
    assert "wandb online init failed" in out and "logging offline" in out


# ------------------------------------------------------------------ curves, ranks, display


# ------------------------------------------------------------------ helpers
