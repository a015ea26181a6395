"""Monitoring (#17): W&B system metrics and the best/last summary, the TensorBoard writer, and the
curves figure, each read back with the libraries' own readers: wandb's protobuf records of the
offline ``.wandb`` file, tensorboard's ``EventAccumulator``, matplotlib's figure objects.

W&B runs offline in the sandbox of test_metrics (no key, a dead base URL, files in tmp_path).
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import CONFIG, read_jsonl
from metrics_helpers import eval_record, make_logger, train_record, wandb_sandbox  # noqa: F401  (autouse)

from vit_dist.core.config import load_config
from vit_dist.core.errors import ConfigError
from vit_dist.metrics import check_tensorboard, draw_curves
from vit_dist.metrics.curves import RESUME_GID, epoch_starts
from vit_dist.metrics.tensorboard_sink import TensorBoardSink
from vit_dist.runtime.distributed import DistEnv

TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "train.batch_size=16", "data.workers=1"]


# ------------------------------------------------------------------ readers


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard itself reads the directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """The same {tag: [(step, value)]} from metrics.jsonl and eval.jsonl (numbers only)."""
    tags: dict[str, list[tuple[int, float]]] = {}
    for prefix, name in (("train", "metrics.jsonl"), ("eval", "eval.jsonl")):
        for record in read_jsonl(out / name):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    tags.setdefault(f"{prefix}/{key}", []).append((record["step"], float(value)))
    return tags


def assert_same_scalars(tb: dict, js: dict) -> None:
    assert set(tb) == set(js)
    for tag, points in js.items():
        assert [s for s, _ in tb[tag]] == [s for s, _ in points], tag
        # TensorBoard keeps float32
        assert [v for _, v in tb[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


# ------------------------------------------------------------------ W&B


def test_wandb_settings_fall_back_to_what_an_older_wandb_takes():
    from vit_dist.metrics.wandb_sink import wandb_settings

    class Settings:
        """wandb 0.18's shape: annotated names (no pydantic fields), a boolean ``reinit``."""

        silent: bool
        console: str
        init_timeout: float
        reinit: bool
        _disable_stats: bool
        _stats_sampling_interval: float

        def __init__(self, **kwargs):
            if not isinstance(kwargs.get("reinit", False), bool):
                raise TypeError("reinit must be a bool")
            self.kwargs = kwargs

    class OldWandb:
        pass

    OldWandb.Settings = Settings
    got = wandb_settings(OldWandb, "offline", system_interval=5.0).kwargs
    assert got == {
        "silent": True,
        "console": "off",
        "init_timeout": 30.0,
        "_disable_stats": False,
        "_stats_sampling_interval": 5.0,
    }
    assert wandb_settings(OldWandb, "offline", system_metrics=False).kwargs["_disable_stats"] is True


def test_system_metrics_config_keys():
    cfg = load_config(CONFIG)
    assert cfg.logging.system_metrics is True and cfg.logging.system_metrics_interval == 15.0
    assert cfg.logging.tensorboard is False
    cfg = load_config(CONFIG, ["logging.system_metrics=false", "logging.system_metrics_interval=2"])
    assert cfg.logging.system_metrics is False and cfg.logging.system_metrics_interval == 2.0
    with pytest.raises(ConfigError, match="system_metrics_interval"):
        load_config(CONFIG, ["logging.system_metrics_interval=0.01"])


# ------------------------------------------------------------------ summary.json, resume records


def test_summary_json_keeps_best_and_last_across_a_resume(tmp_path):
    out = tmp_path / "run"
    lg = make_logger(out)
    for step, top1 in ((10, 0.5), (20, 0.8), (30, 0.9)):
        lg.log_train(train_record(step))
        lg.log_eval(eval_record(step, top1=top1))
    lg.finish(None)  # killed after step 30; its last checkpoint is at step 20
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["step"] == 30 and summary["last_eval"]["step"] == 30
    assert not (out / "resumes.jsonl").exists()

    lg = make_logger(out, start_step=20)  # the eval at 30 is superseded: best is 20 again
    assert lg.best_eval["step"] == 20
    lg.log_train(train_record(30))
    lg.log_eval(eval_record(30, top1=0.6))
    lg.finish(eval_record(30, top1=0.6))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] == {"step": 20, "epoch": 2, "top1": 0.8, "top5": 90.0, "loss": 1.0 / 20}
    assert summary["last_eval"]["top1"] == 0.6 and summary["last_train"]["step"] == 30
    assert [r["step"] for r in read_jsonl(out / "resumes.jsonl")] == [20]

    lg = make_logger(out, start_step=10)  # resumed from an earlier checkpoint: the resume at 20 goes
    lg.finish(None)
    assert [r["step"] for r in read_jsonl(out / "resumes.jsonl")] == [10]


# ------------------------------------------------------------------ TensorBoard


def test_tensorboard_holds_the_jsonl_scalars_and_drops_superseded_steps(tmp_path):
    out = tmp_path / "run"
    lg = make_logger(out, tensorboard=True)
    for step in range(1, 7):
        lg.log_train(train_record(step, loss=torch.tensor(1.0 / step)))
        if step % 3 == 0:
            lg.log_eval(eval_record(step))
    lg.finish(None)
    assert_same_scalars(tensorboard_scalars(out / "tensorboard"), jsonl_scalars(out))

    # Resumed at step 3: steps 4-6 of the first process are superseded, in both readers.
    lg = make_logger(out, tensorboard=True, start_step=3)
    for step in (4, 5):
        lg.log_train(train_record(step, loss=10.0 + step))
    lg.finish(None)
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2
    tb, js = tensorboard_scalars(out / "tensorboard"), jsonl_scalars(out)
    assert_same_scalars(tb, js)
    assert tb["train/loss"][-1] == (5, 15.0) and tb["eval/top1"] == [(3, 53.0)]


def test_tensorboard_failures_warn_once_and_never_stop_the_run(tmp_path, capsys):
    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    lg = make_logger(out, tensorboard=True)
    lg.log_train(train_record(1))
    sink = lg.sink(TensorBoardSink)
    sink._file.close()
    sink._file, sink._writer._writer = FullDisk(), FullDisk()
    for step in (2, 3):
        lg.log_train(train_record(step))
    lg.log_eval(eval_record(3))
    lg.finish(eval_record(3))
    printed = capsys.readouterr().out
    assert (
        printed.count("warning: tensorboard write failed (OSError: [Errno 28] No space left on device)") == 1
    )
    assert "TensorBoard logging stopped" in printed
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert (out / "summary.json").is_file() and (out / "curves.png").is_file()
    assert tensorboard_scalars(out / "tensorboard")["train/loss"] == [(1, pytest.approx(2.0))]

    # A log directory that cannot be made (a file there): one warning, the run goes on.
    out = tmp_path / "blocked"
    out.mkdir()
    (out / "tensorboard").write_text("a file")
    lg = make_logger(out, tensorboard=True)
    lg.log_train(train_record(1))
    lg.finish(None)
    assert "warning: tensorboard set-up failed (FileExistsError" in capsys.readouterr().out
    assert len(read_jsonl(out / "metrics.jsonl")) == 1


def test_tensorboard_missing_is_one_config_error_before_any_work(tmp_path, monkeypatch):
    from vit_dist.training.trainer import Trainer

    # What a missing package looks like to import (its modules loaded by other tests included).
    for name in [n for n in sys.modules if n == "tensorboard" or n.startswith("tensorboard.")] + [
        "tensorboard"
    ]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=r"^logging.tensorboard=true needs the tensorboard package .*"):
        check_tensorboard()
    message = ""
    try:
        check_tensorboard()
    except ConfigError as e:
        message = str(e)
    assert message.endswith("pip install vit_dist[tensorboard]") and "\n" not in message
    # Every rank alike (rank 0 alone failing would leave the others waiting), nothing written.
    with pytest.raises(ConfigError, match="pip install"):
        make_logger(tmp_path / "rank1", is_main=False, tensorboard=True)
    out = tmp_path / "run"
    cfg = load_config(CONFIG, ["logging.tensorboard=true", f"output_dir={out}", "data.train=/nonexistent"])
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    with pytest.raises(ConfigError, match="pip install vit_dist"):
        Trainer(cfg, env)
    assert not out.exists() and not (tmp_path / "rank1").exists()


# ------------------------------------------------------------------ curves


def line_labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def test_curves_draw_eval_loss_resumes_and_an_epoch_axis(tmp_path):
    out = tmp_path / "run"
    lg = make_logger(out)
    for step in range(1, 41):  # epochs of 10 steps; an eval at every epoch end (epoch already counted)
        lg.log_train(train_record(step, epoch=(step - 1) // 10))
        if step % 10 == 0:
            lg.log_eval(eval_record(step, epoch=step // 10, loss=3.0 / step))
    lg.finish(None)
    lg = make_logger(out, start_step=20)
    for step in range(21, 41):
        lg.log_train(train_record(step, epoch=(step - 1) // 10))
        if step % 10 == 0:
            lg.log_eval(eval_record(step, epoch=step // 10, loss=3.0 / step))
    lg.finish(None)

    fig = draw_curves(out, epoch_axis=True)
    axes = fig.axes[:4]
    loss_ax = axes[0]
    assert {"train loss", "eval loss", "resumed"} <= set(line_labels(loss_ax))
    eval_line = next(line for line in loss_ax.get_lines() if line.get_label() == "eval loss")
    assert list(eval_line.get_xdata()) == [10, 20, 30, 40]
    assert list(eval_line.get_ydata()) == pytest.approx([0.3, 0.15, 0.1, 0.075])
    assert "resumed" in [t.get_text() for t in loss_ax.get_legend().get_texts()]
    for ax in axes:
        resumes = [line for line in ax.get_lines() if line.get_gid() == RESUME_GID]
        assert [list(line.get_xdata()) for line in resumes] == [[20, 20]]
        (top,) = ax.child_axes  # the secondary (epoch) axis
        assert top.get_xlabel() == "epoch"
        assert list(top.get_xticks()) == [0, 10, 20, 30, 40]
        assert [t.get_text() for t in top.get_xticklabels()] == ["0", "1", "2", "3", "4"]
        assert ax.get_xlabel() == "step"

    assert not draw_curves(out, epoch_axis=False).axes[0].child_axes
    assert draw_curves(out).axes[0].child_axes  # auto: the records span several epochs


def test_epoch_starts_and_tick_thinning(tmp_path):
    records = [{"step": s, "epoch": (s - 1) // 7} for s in range(5, 200, 5)]
    starts = epoch_starts(records)
    assert starts[:3] == [(0.0, 0), (10.0, 1), (15.0, 2)]  # logged every 5: up to 5 steps late
    assert epoch_starts([{"step": 7, "epoch": 1}, {"step": 5, "epoch": 2}]) == [(5.0, 1), (5.0, 2)]
    out = tmp_path / "run"
    lg = make_logger(out)
    for step in range(1, 301):
        lg.log_train(train_record(step, epoch=step - 1))  # 300 one-step epochs
    lg.finish(None)
    (top,) = draw_curves(out).axes[0].child_axes
    assert 1 < len(top.get_xticks()) <= 12


# ------------------------------------------------------------------ end to end


def test_training_run_writes_tensorboard_summary_and_resume_marks(digits_data_dir, tmp_path):
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    out = tmp_path / "run"
    args = [*TINY, f"data.train={digits_data_dir}", f"data.val={digits_data_dir}", "logging.every=5"]
    args += ["train.batch_size=128", "data.workers=0", "logging.wandb=false", "logging.tensorboard=true"]
    args += [f"output_dir={out}"]
    env = init_distributed()
    Trainer(load_config(CONFIG, [*args, "train.epochs=1"]), env).fit()
    Trainer(load_config(CONFIG, [*args, "train.epochs=2", "resume=auto"]), env).fit()
    steps_per_epoch = 12  # ceil(1437 / 128)
    assert [r["step"] for r in read_jsonl(out / "resumes.jsonl")] == [steps_per_epoch]
    evals = read_jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [steps_per_epoch, 2 * steps_per_epoch]
    assert all(e["loss"] > 0 for e in evals)  # eval loss is in the log
    summary = json.loads((out / "summary.json").read_text())
    best = max(evals, key=lambda e: e["top1"])
    assert summary["best"]["step"] == best["step"] and summary["best"]["top1"] == best["top1"]
    assert summary["last_eval"]["step"] == 2 * steps_per_epoch
    assert_same_scalars(tensorboard_scalars(out / "tensorboard"), jsonl_scalars(out))
    assert (out / "curves.png").is_file()
