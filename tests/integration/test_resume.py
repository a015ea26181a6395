"""Never lose a run: hard kills, kills during a save, preemption signals, NaN steps, other world
sizes and other models -- each followed by a resume that must continue exactly."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import assert_ok, read_jsonl, run_train
from resume_helpers import assert_same_run, resume_args


@pytest.mark.slow
def test_single_process_preemption_exit_code_and_kill_during_save(digits_data_dir, tmp_path):
    ref = tmp_path / "ref"
    assert_ok(run_train(resume_args(digits_data_dir, ref, steps=12, every=4)))

    pre = tmp_path / "pre"
    proc = run_train(resume_args(digits_data_dir, pre, steps=12, every=4), VIT_DIST_FAULT="sigterm@6")
    assert proc.returncode == 75, proc.stderr  # documented: checkpoint saved, requeue me
    assert json.loads((pre / "preempted.json").read_text())["signal"] == "SIGTERM"

    # Killed while writing the step-8 checkpoint: step 4 stays the latest complete checkpoint.
    ks = tmp_path / "kill_in_save"
    proc = run_train(resume_args(digits_data_dir, ks, steps=12, every=4), VIT_DIST_FAULT="kill_in_save@8")
    assert proc.returncode == -9
    ckpts = sorted(p.name for p in (ks / "checkpoints").iterdir())
    assert "step-00000008.tmp" in ckpts and "step-00000008" not in ckpts and "step-00000004" in ckpts
    proc = run_train(resume_args(digits_data_dir, ks, steps=12, every=4, extra=["resume=auto"]))
    assert_ok(proc)
    assert "resumed from" in proc.stdout and "step-00000004" in proc.stdout
    assert not list((ks / "checkpoints").glob("*.tmp"))  # the torn save was cleaned up
    assert_same_run(ref, ks)


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.oldest_torch)])
def test_resume_on_another_world_size(digits_data_dir, tmp_path, strategy):
    # train.epochs=2 on 2 ranks: ceil(ceil(1437 / 2) / 16) = 45 steps per epoch, 90 in all, 1 epoch
    # of warmup. Killed at step 7, resumed from the step-5 checkpoint on 1 process (90 steps per
    # epoch): the rest of epoch 0 is re-planned, 1437 - 5 x 2 x 16 = 1277 samples = 80 steps, so
    # epoch 0 ends at step 85 and epoch 1 at 175, where the lr schedule, picked up where it was
    # (still in warmup), ends.
    out = tmp_path / "run"
    args = lambda *extra: [
        *resume_args(digits_data_dir, out, steps=1, extra=[f"parallel.strategy={strategy}", *extra]),
        "train.steps=null",
        "train.epochs=2",
        "optim.warmup_epochs=1",
    ]
    proc = run_train(args(), nproc=2, VIT_DIST_FAULT="kill@7")
    assert proc.returncode != 0
    before = {m["step"]: m["lr"] for m in read_jsonl(out / "metrics.jsonl")}
    proc = run_train(args("resume=auto"), nproc=1, VIT_DIST_FAULT="kill@102")
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    anchored = {m["step"]: m["lr"] for m in read_jsonl(out / "metrics.jsonl")}
    # Killed again, resumed on the same world size from step 100: the checkpoint carries the
    # re-anchored schedule, so the run goes on with the same lr and the same last step.
    proc = run_train(args("resume=auto"), nproc=1)
    assert_ok(proc)
    assert "steps per epoch changed" not in proc.stdout + proc.stderr
    assert "world size changed" in log and "(2 -> 1): the rest of epoch 0 is re-planned" in log
    assert "1277 samples of it are left" in log
    assert "(45 -> 90): 170 steps left to the end of train.epochs=2" in log
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 176))
    assert metrics[-1]["world_size"] == 1 and metrics[0]["world_size"] == 2
    epoch = {m["step"]: m["epoch"] for m in metrics}
    assert epoch[85] == 0 and epoch[86] == 1 == epoch[175]  # the re-planned epoch ran to its end
    lr = {m["step"]: m["lr"] for m in metrics}
    assert all(lr[s] == before[s] for s in range(1, 6))
    assert all(lr[s] == anchored[s] for s in range(6, 103))
    # No jump at the resume: fresh, the 180-step schedule would restart warmup at half the lr.
    assert abs(lr[6] - before[6]) <= abs(before[6] - before[5])
    optim = yaml.safe_load((out / "config.yaml").read_text())["optim"]
    peak = max(lr.values())
    assert peak == pytest.approx(optim["lr"], rel=0.01) and max(lr, key=lr.get) in range(82, 87)  # 1 epoch
    assert lr[175] == pytest.approx(optim["min_lr"])  # the cosine reaches min_lr at the new last step
    assert json.loads((out / "eval.json").read_text())["num_samples"] == 360


@pytest.mark.slow
def test_resume_with_other_loader_workers_and_batch_size(digits_data_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_train(resume_args(digits_data_dir, out, steps=8, every=5), VIT_DIST_FAULT="kill@6")
    assert proc.returncode != 0
    before = {m["step"]: m["lr"] for m in read_jsonl(out / "metrics.jsonl")}
    peak = yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"]
    extra = ["resume=auto", "data.workers=2", "train.batch_size=12", f"optim.lr={2 * peak}"]
    proc = run_train(resume_args(digits_data_dir, out, steps=8, every=5, extra=extra))
    assert_ok(proc)  # was: "cannot resume the data position mid-epoch after changing num_workers"
    log = proc.stdout + proc.stderr
    assert "epoch 0 re-planned for world size 1, 2 stream(s) per rank, batch 12" in log
    assert f"{1437 - 5 * 16} samples of it are left" in log
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics][-3:] == [6, 7, 8]
    # The new optim.lr takes effect (the checkpoint's scheduler state used to override it).
    assert f"peak lr {peak:.4g} in" in log and f"{2 * peak:.4g} for this run" in log
    lr = {m["step"]: m["lr"] for m in metrics}
    assert lr[5] == before[5] and lr[6] == pytest.approx(2 * before[6], rel=1e-9)


@pytest.mark.slow
@pytest.mark.multiproc
def test_bad_sample_counts_carry_over_to_another_world_size(make_data_shards, tmp_path):
    # Every 8th sample is a corrupt JPEG. 2 ranks read 4 steps x 2 x 16 samples, checkpoint at
    # step 3 and die at 4; 1 process resumes: the job's bad-sample count (the metric, and what
    # data.max_bad_fraction limits) goes on from the checkpoint's, not from 0.
    def corrupt(shard, i, files):
        return {**files, "jpg": b"\xff\xd8\xff\xe0 not a jpeg"} if i % 8 == 3 else files

    data = make_data_shards([40] * 8, edit=corrupt)
    out = tmp_path / "run"
    args = lambda *extra: [
        *resume_args(data, out, steps=6, every=3, extra=["data.max_bad_fraction=0.5", *extra]),
        "data.val=null",
    ]
    proc = run_train(args(), nproc=2, VIT_DIST_FAULT="kill@4")
    assert proc.returncode != 0
    saved = {m["step"]: m["bad_samples"] for m in read_jsonl(out / "metrics.jsonl")}[3]
    assert saved >= 6  # 96 samples read (and the loaders' read-ahead), 1 in 8 corrupt
    proc = run_train(args("resume=auto"), nproc=1)
    assert_ok(proc)
    bad = {m["step"]: m["bad_samples"] for m in read_jsonl(out / "metrics.jsonl")}
    assert bad[4] >= saved and bad[6] >= bad[4], bad  # was: back to the resumed process's own count
    assert bad[6] < saved + 3 * 16  # ... and not counted twice


@pytest.mark.multiproc
def test_nan_steps_are_skipped_together_then_stop_the_run(digits_data_dir, tmp_path):
    out = tmp_path / "nan_once"
    proc = run_train(resume_args(digits_data_dir, out, steps=6, every=2), nproc=2, VIT_DIST_FAULT="nan@3")
    assert_ok(proc)  # one non-finite step on rank 0 only: skipped by both ranks, the run goes on
    m = {r["step"]: r for r in read_jsonl(out / "metrics.jsonl")}
    assert m[2]["skipped_steps"] == 0 and m[3]["skipped_steps"] == 1 and m[6]["skipped_steps"] == 1

    out = tmp_path / "nan_many"
    proc = run_train(
        resume_args(digits_data_dir, out, steps=8, every=2, extra=["train.max_skipped_steps=1"]),
        nproc=2,
        VIT_DIST_FAULT="nan@3,nan@4",
    )
    assert proc.returncode != 0
    assert "training stopped: 2 optimizer steps had a non-finite loss or gradient" in proc.stderr
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts[-1] == "step-00000002"  # the last good checkpoint, intact
    assert (out / "checkpoints" / "step-00000002" / "meta.json").is_file()


def test_checkpoint_of_another_model_is_refused(digits_data_dir, tmp_path):
    out = tmp_path / "run"
    assert_ok(run_train(resume_args(digits_data_dir, out, steps=2, every=2)))
    proc = run_train(
        resume_args(digits_data_dir, out, steps=4, every=2, extra=["resume=auto", "model.depth=3"])
    )
    assert proc.returncode == 4
    assert "checkpoint error:" in proc.stderr and "model.depth: checkpoint 2, this run 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_train(
        resume_args(digits_data_dir, tmp_path / "x", steps=2, extra=[f"resume={tmp_path / 'nothing'}"])
    )
    assert proc.returncode == 4 and "not a complete checkpoint" in proc.stderr
