"""vit_dist.metrics: JSONL records, resume truncation, W&B offline/disabled paths, curves PNG,
non-main ranks, the plain progress lines, MFU, peak FLOP/s, peak memory and StepTimer.

No test may reach the network: W&B runs offline with its base URL pointed at a closed local
port and every W&B directory (config, cache, data) inside the test's tmp_path.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from metrics_helpers import eval_record, make_logger, train_record, wandb_sandbox  # noqa: F401  (autouse)
from support.metrics import read_jsonl

from vit_dist import metrics
from vit_dist.metrics import (
    RunLogger,
    StepTimer,
    hardware,
    max_memory_mb,
    mfu,
    peak_flops,
    resolve_wandb_mode,
    runlog,
    timing,
)
from vit_dist.metrics.sink import MetricSink
from vit_dist.metrics.wandb_sink import offline_segments

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ JSONL files


def test_resume_truncates_superseded_lines(tmp_path):
    out = tmp_path / "run"
    lg = make_logger(out)
    for s in range(1, 11):
        lg.log_train(train_record(s))
        if s % 5 == 0:
            lg.log_eval(eval_record(s))
    lg.finish(None)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "lo')  # torn line of a process killed mid-write

    # Resume from the checkpoint at step 6: steps 7..10 (and the torn 11) are superseded.
    lg = make_logger(out, start_step=6)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in read_jsonl(out / "eval.jsonl")] == [5]
    for s in range(7, 13):
        lg.log_train(train_record(s))
        if s % 5 == 0:
            lg.log_eval(eval_record(s))
    lg.finish(None)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 13))
    assert [r["step"] for r in read_jsonl(out / "eval.jsonl")] == [5, 10]

    # start_step=0 is a fresh run in the same directory: nothing of the old run is kept.
    lg = make_logger(out, start_step=0)
    lg.log_train(train_record(1))
    lg.finish(None)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    assert read_jsonl(out / "eval.jsonl") == []


class RecordingSink:
    """A sink of its own, implementing ``MetricSink``: notes every call it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_train(self, step: int | None, record: dict) -> None:
        self.calls.append(("train", step, record["loss"]))

    def log_eval(self, step: int | None, record: dict) -> None:
        self.calls.append(("eval", step, record["top1"]))

    def summarize(self, summary: dict) -> None:
        self.calls.append(("summary", summary))

    def finish(self) -> None:
        self.calls.append(("finish",))


def test_custom_sink_gets_train_eval_summary_and_finish(tmp_path):
    out = tmp_path / "run"
    sink, factory_calls = RecordingSink(), []

    def sinks(output_dir: Path, info) -> list[MetricSink]:
        factory_calls.append(output_dir)
        return [sink]

    lg = RunLogger(str(out), is_main=True, total_steps=10, sinks=sinks, progress="lines")
    assert factory_calls == [out.absolute()] and lg.sinks[1] is sink  # after the JSONL files
    lg.log_train(train_record(1, loss=0.5))
    lg.log_eval(eval_record(1, top1=60.0))
    lg.log_train(train_record(2, loss=0.25))
    lg.log_eval(eval_record(2, top1=55.0))  # not better than step 1: no new summary
    lg.finish(None)
    lg.log_train(train_record(3))  # after finish: ignored
    best = {"best/eval_top1": 60.0, "best/eval_top5": 90.0, "best/step": 1}
    assert sink.calls == [
        ("train", 1, 0.5),
        ("eval", 1, 60.0),
        ("summary", best),
        ("train", 2, 0.25),
        ("eval", 2, 55.0),
        ("summary", best),  # at the end
        ("finish",),
    ]
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]

    # A resumed run's sinks start with the best of its earlier segments.
    sink = RecordingSink()
    lg = RunLogger(str(out), is_main=True, total_steps=10, sinks=sinks, progress="lines", start_step=2)
    assert sink.calls == [("summary", best)]
    lg.finish(None)

    # Other ranks never build their sinks.
    factory_calls.clear()
    lg = RunLogger(str(tmp_path / "rank1"), is_main=False, total_steps=10, sinks=sinks)
    lg.log_train(train_record(1))
    lg.finish(None)
    assert factory_calls == [] and lg.sinks == [] and not (tmp_path / "rank1").exists()


# ------------------------------------------------------------------ W&B


def test_offline_segments_include_same_second_suffixes_in_order(tmp_path):
    # A resumed process that starts in the same second as the last segment gets "-1", "-2"...
    # from wandb (seen in CI); the sync command must list those too, in the order written.
    root = tmp_path / "wandb"
    names = [
        "offline-run-20261126_165020-abc123-10",
        "offline-run-20261126_165020-abc123",
        "offline-run-20261126_165020-abc123-2",
        "offline-run-20261125_090000-abc123",
        "offline-run-20261126_165020-abc123-1",
        "offline-run-20261126_165021-xabc123",  # another run whose id ends the same
        "offline-run-20261126_165022-abc1234",  # another run whose id starts the same
    ]
    for n in names:
        (root / n).mkdir(parents=True)
    (root / "offline-run-20261126_165023-abc123.txt").write_text("not a directory")
    got = [p.rsplit("/", 1)[1] for p in offline_segments(tmp_path, "abc123")]
    assert got == [
        "offline-run-20261125_090000-abc123",
        "offline-run-20261126_165020-abc123",
        "offline-run-20261126_165020-abc123-1",
        "offline-run-20261126_165020-abc123-2",
        "offline-run-20261126_165020-abc123-10",
    ]
    assert offline_segments(tmp_path / "none", "abc123") == []


def test_wandb_disabled_creates_no_wandb_files(tmp_path, monkeypatch):
    lg = make_logger(tmp_path / "off", wandb_enabled=False)
    lg.log_train(train_record(1))
    lg.finish(None)
    assert lg.wandb_run_dir is None
    assert not (tmp_path / "off" / "wandb").exists() and not (tmp_path / "off" / "wandb_run_id.txt").exists()

    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment's explicit "no W&B" wins
    lg = make_logger(tmp_path / "env", wandb_enabled=True, wandb_mode="online")
    lg.log_train(train_record(1))
    lg.finish(None)
    assert lg.wandb_run_dir is None and not (tmp_path / "env" / "wandb").exists()


def test_resolve_wandb_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_wandb_mode("auto") == "offline"  # no key: never online, never a prompt
    assert resolve_wandb_mode("offline") == "offline"
    assert resolve_wandb_mode("online") == "online"  # RunLogger downgrades it without a key

    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password " + "k" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_wandb_mode("auto") == "online"  # host taken from WANDB_BASE_URL
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode("online") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("offline") == "disabled"
    with pytest.raises(ValueError):
        resolve_wandb_mode("sometimes")


# ------------------------------------------------------------------ curves, ranks, display


def test_curves_png_written(tmp_path):
    out = tmp_path / "run"
    lg = make_logger(out)
    for s in range(1, 81):
        lg.log_train(train_record(s))
        if s % 20 == 0:
            lg.log_eval(eval_record(s, ema_top1=49.0 + s))
    lg.finish(None)
    data = (out / "curves.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 20_000


def test_non_main_rank_writes_nothing(tmp_path, capsys):
    out = tmp_path / "rank1"
    lg = make_logger(out, is_main=False, wandb_enabled=True, progress="bar")
    lg.log_train(train_record(1))
    lg.log_eval(eval_record(1))
    lg.info("hello")
    lg.finish(eval_record(1))
    assert not out.exists()
    assert lg.wandb_run_dir is None
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    # Bad arguments fail on every rank, not on rank 0 alone (which would hang the others).
    with pytest.raises(ValueError, match="^logging.mode must be"):
        make_logger(out, is_main=False, wandb_mode="sometimes")
    with pytest.raises(ValueError):
        make_logger(out, is_main=False, progress="fancy")


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def perf_counter(self) -> float:
        return self.t


def test_lines_progress_format(tmp_path, monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(runlog, "time", clock)
    lg = make_logger(tmp_path / "run", total_steps=3000, start_step=100)
    clock.t += 20.0  # 20 steps in 20 s in this process: 1 s/step, 2880 steps left
    lg.log_train(train_record(120, epoch=2, loss=1.23449, lr=4.8e-4, images_per_sec=1532.2))
    lg.log_eval(eval_record(120, epoch=2, top1=76.54, top5=93.1, loss=0.91234, num_samples=360))
    lg.info("checkpoint saved")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step 120/3000 ep 2 loss 1.2345 lr 4.8e-04 img/s 1532 eta 00:48:00"
    assert lines[1] == "eval step 120 ep 2 top1 76.54 top5 93.1 loss 0.9123 (360 samples)"
    assert lines[2] == "checkpoint saved"
    lg.finish(None)


def test_bar_progress_keeps_messages(tmp_path, capsys):
    lg = make_logger(tmp_path / "run", total_steps=10, progress="bar")
    lg.log_train(train_record(1))
    lg.info("a message")
    lg.log_train(train_record(2))
    lg.finish(None)
    out = capsys.readouterr().out
    assert "a message\n" in out and "2/10" in out and "step 1/10" not in out


# ------------------------------------------------------------------ helpers


def test_mfu_arithmetic():
    # 3 x 1 GFLOP/image x 1000 images/s over 4 devices of 1 TFLOP/s = 0.75
    assert mfu(1e9, 1000.0, 4, 1e12) == pytest.approx(0.75)
    assert mfu(4.6e9, 2000.0, 1, 989e12) == pytest.approx(3 * 4.6e9 * 2000 / 989e12)
    assert math.isnan(mfu(1e9, 1000.0, 1, 0.0))


def test_peak_flops_cpu_measured_once_without_touching_the_training_rng(monkeypatch):
    monkeypatch.setattr(hardware, "_MEASURED_PEAKS", {})
    calls = []
    measure = hardware.measure_matmul_peak
    monkeypatch.setattr(hardware, "measure_matmul_peak", lambda *a: calls.append(a) or measure(*a))
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    p = peak_flops("cpu", torch.float32)
    assert torch.equal(torch.rand(4), expected)  # a metric must not change the run's randomness
    assert math.isfinite(p) and p > 1e8
    assert peak_flops(torch.device("cpu"), "fp32") == p and len(calls) == 1  # cached per (type, dtype)
    with pytest.raises(ValueError):
        peak_flops("cpu", "int7")


def test_a_measured_peak_below_what_the_model_achieved_is_raised_so_mfu_stays_at_most_1(monkeypatch):
    """A peak measured while the machine was loaded (summary.json once said mfu 1.549): the first
    MFU above 1 measures again, and the peak becomes at least what the model achieved."""
    readings = iter([1e9, 1.2e9])  # the start-up measurement on a loaded machine, then the retry
    monkeypatch.setattr(hardware, "_MEASURED_PEAKS", {})
    monkeypatch.setattr(hardware, "measure_matmul_peak", lambda *a: next(readings))
    low = peak_flops("cpu", torch.float32)
    flops, ips = 1e7, 60.0  # 3 x 1e7 x 60 = 1.8e9 FLOP/s achieved
    assert hardware.mfu(flops, ips, 1, low) == pytest.approx(1.8)
    raised = hardware.raised_peak("cpu", torch.float32, 3 * flops * ips)
    assert raised == pytest.approx(1.8e9) and hardware.mfu(flops, ips, 1, raised) == pytest.approx(1.0)
    assert peak_flops("cpu", torch.float32) == raised  # kept for the rest of the run
    # A datasheet peak is never raised: an MFU above it is the FLOP count's error.
    monkeypatch.setattr(hardware, "datasheet_peak", lambda *a: 989e12)
    assert hardware.raised_peak("cuda", torch.bfloat16, 2e15) == 989e12


def test_peak_flops_gpu_table(monkeypatch):
    table = hardware.table_peak
    assert table("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert table("NVIDIA H200", torch.float16) == 989e12
    assert table("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert table("NVIDIA A100-SXM4-80GB", torch.bfloat16) == 312e12
    assert table("NVIDIA GeForce RTX 4090", torch.bfloat16) == 165e12
    assert table("Some Future GPU", torch.bfloat16) is None  # measured instead
    monkeypatch.setattr(hardware, "_tf32_enabled", lambda: True)
    assert table("NVIDIA A100-SXM4-40GB", torch.float32) == 156e12
    monkeypatch.setattr(hardware, "_tf32_enabled", lambda: False)
    assert table("NVIDIA A100-SXM4-40GB", torch.float32) is None  # true fp32: measured


def test_datasheet_peak_names_known_gpus_only(monkeypatch):
    assert metrics.datasheet_peak("cpu", "bf16") is None  # a CPU has no datasheet figure here
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "NVIDIA H100 80GB HBM3")
    assert metrics.datasheet_peak("cuda", "bf16") == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Some Future GPU")
    assert metrics.datasheet_peak("cuda", torch.bfloat16) is None


def test_max_memory_mb_cpu():
    mb = max_memory_mb("cpu")
    assert 10.0 < mb < 1e6  # this interpreter with torch loaded is well above 10 MiB
    if torch.cuda.is_available():
        assert max_memory_mb(torch.device("cuda", 0)) >= 0.0


def test_step_timer(monkeypatch):
    clock = FakeClock(0.0)
    monkeypatch.setattr(timing, "time", clock)
    timer = StepTimer()
    for wait, compute in ((0.1, 0.9), (0.3, 0.7)):
        timer.data_start()
        clock.t += wait
        timer.data_end()
        clock.t += compute
        timer.step_end()
    s = timer.summary()
    assert s["steps"] == 2
    assert s["step_time"] == pytest.approx(1.0) and s["data_wait_frac"] == pytest.approx(0.2)

    clock.t += 50.0  # evaluation between windows is not step time
    synced = []

    def sync():
        synced.append(True)
        clock.t += 0.5  # device work still queued when the host finished

    timer.data_start()
    clock.t += 0.5
    timer.data_end()
    clock.t += 1.0
    timer.step_end()
    s = timer.summary(sync_fn=sync)
    assert synced == [True]
    assert s == {"step_time": pytest.approx(2.0), "data_wait_frac": pytest.approx(0.25), "steps": 1}
    assert timer.summary() == {"step_time": 0.0, "data_wait_frac": 0.0, "steps": 0}


def test_input_bound_advice_comes_once_after_three_slow_windows():
    from vit_dist.metrics import InputBoundAdvisor

    adv = InputBoundAdvisor(workers=4)
    # The first window (compilation, loader start-up) never counts; a fast window resets the run.
    said = [adv.update(w) for w in (0.9, 0.5, 0.3, 0.1, 0.25, 0.35)]
    assert said == [None] * 6
    msg = adv.update(0.3)  # windows 5-7: 0.25, 0.35, 0.3
    assert msg.startswith("input-bound: 30% of step time waited for data over the last 3 logging windows")
    assert "data.workers=4 per rank" in msg and "--resize" in msg
    assert [adv.update(w) for w in (0.9, 0.9, 0.9, 0.9)] == [None] * 4  # said once per process


def test_input_bound_advice_stays_quiet_below_the_threshold():
    from vit_dist.metrics import InputBoundAdvisor

    adv = InputBoundAdvisor(workers=2, threshold=0.2)
    assert all(adv.update(w) is None for w in [0.9] + [0.19] * 50)
