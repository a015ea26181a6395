"""What the metrics tests share (test_metrics.py, test_monitoring.py): a W&B sandbox (offline, no
key, nothing outside tmp_path; autouse where it is imported), records and a RunLogger.

No test may reach the network: W&B runs offline with its base URL pointed at a closed local
port and every W&B directory (config, cache, data) inside the test's tmp_path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vit_dist.core.config import LoggingSection
from vit_dist.metrics import RunLogger


@pytest.fixture(autouse=True)
def wandb_sandbox(tmp_path, monkeypatch):
    """Offline W&B, no key, nothing outside tmp_path, and a dead base URL as a backstop."""
    home = tmp_path / "wandb_home"
    for var in (
        "WANDB_API_KEY",
        "WANDB_DIR",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("NETRC", str(home / "no_netrc"))
    # XDG_CACHE_HOME: wandb-core writes its own debug log under $XDG_CACHE_HOME/wandb/logs.
    for var in (
        "WANDB_CONFIG_DIR",
        "WANDB_CACHE_DIR",
        "WANDB_DATA_DIR",
        "WANDB_ARTIFACT_DIR",
        "XDG_CACHE_HOME",
    ):
        monkeypatch.setenv(var, str(home / var.lower()))


def train_record(step: int, **kw) -> dict:
    rec = dict(
        step=step,
        epoch=step // 10,
        samples_seen=step * 32,
        loss=2.0 / step,
        lr=1e-3 * min(1.0, step / 5),
        grad_norm=1.5,
        images_per_sec=1500.0 + step,
        mfu=0.31,
        max_memory_mb=812.5,
        data_wait_frac=0.02,
        bad_samples=0,
        world_size=1,
    )
    rec.update(kw)
    return rec


def eval_record(step: int, **kw) -> dict:
    rec = dict(step=step, epoch=step // 10, top1=50.0 + step, top5=90.0, loss=1.0 / step, num_samples=360)
    rec.update(kw)
    return rec


# make_logger's keywords that are LoggingSection fields: its own names, and these for some.
_SETTINGS = {f.name: f.name for f in dataclasses.fields(LoggingSection)} | {
    "wandb_enabled": "wandb",
    "wandb_mode": "mode",
    "run_name": "name",
}


def make_logger(out: Path, **kw) -> RunLogger:
    """``RunLogger.create`` with test defaults: ``kw`` are its own keywords (is_main, start_step,
    ...) or the ``logging`` section's settings (wandb_enabled, wandb_mode, progress, ...)."""
    kw.setdefault("is_main", True)
    kw.setdefault("total_steps", 100)
    kw.setdefault("config", {"model": "vit_tiny", "lr": 1e-3})
    kw.setdefault("wandb_enabled", False)
    kw.setdefault("progress", "lines")
    settings = LoggingSection(**{_SETTINGS[k]: kw.pop(k) for k in list(kw) if k in _SETTINGS})
    return RunLogger.create(str(out), settings, **kw)
