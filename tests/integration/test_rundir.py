"""A run owns its output directory: a new run never changes an earlier run's files, a finished
run resumed reports its result and changes nothing, one job at a time holds the directory (and
a killed job's lock never blocks the next), and an unusable output_dir is one line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, assert_ok, env, run_evaluate, run_process, run_train

TINY = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "train.batch_size=16",
    "data.workers=1",
    "logging.wandb=false",
]


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.train={data}", f"data.val={data}", *TINY, f"output_dir={out}", *extra]


def _tree(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256 of its bytes), but the names in ``skip``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(digits_data_dir, tmp_path_factory) -> Path:
    """A run that trained 4 steps to its end (checkpoints at 2 and 4), and its stdout."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = run_train(_args(digits_data_dir, out, "train.steps=4", "checkpoint.every=2"))
    assert_ok(proc)
    (out.parent / "stdout.txt").write_text(proc.stdout)
    return out


def test_a_run_records_its_id_in_run_json_and_every_checkpoint(finished_run):
    marker = json.loads((finished_run / "run.json").read_text())
    assert len(marker["run_id"]) == 32 and marker["host"] and marker["created"]
    assert marker["finished_step"] == 4  # its end is recorded: a resume reports it
    metas = list((finished_run / "checkpoints").glob("*/meta.json"))
    assert len(metas) >= 2
    assert {json.loads(m.read_text())["run_id"] for m in metas} == {marker["run_id"]}
    holder = json.loads((finished_run / ".lock").read_text())
    assert set(holder) == {"host", "pid", "slurm_job_id", "started"}


def test_a_new_run_into_a_used_dir_refuses_and_changes_nothing(digits_data_dir, finished_run):
    before = _tree(finished_run)  # .lock included: a refused job does not even name itself there
    proc = run_train(_args(digits_data_dir, finished_run, "train.steps=4", "train.seed=1"))
    assert proc.returncode == 2
    line = _one_line(proc)
    assert line.startswith(f"config error: output_dir={finished_run} already holds a run"), line
    assert "last checkpoint step 4" in line and "resume=auto" in line and "another output_dir" in line
    assert _tree(finished_run) == before  # was: metrics.jsonl replaced, checkpoints pruned


@pytest.mark.multiproc
def test_every_rank_of_a_refused_job_stops_with_the_same_line(digits_data_dir, finished_run):
    before = _tree(finished_run)
    proc = run_train(_args(digits_data_dir, finished_run, "train.steps=4"), nproc=2, timeout=300)
    assert proc.returncode != 0, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("config error: ")]
    assert len(ours) == 1 and "already holds a run" in ours[0], proc.stderr  # rank 0 prints it
    # Both ranks stop (the launcher reports it, with its own traceback); none in vit_dist. The
    # launcher's summary names the root cause: our line, from the error file torchrun asked for.
    assert "exitcode  : 2" in proc.stderr and "vit_dist/" not in proc.stderr, proc.stderr
    assert f"traceback : {ours[0]}" in proc.stderr, proc.stderr
    assert "To enable traceback see" not in proc.stderr
    assert _tree(finished_run) == before


def test_resuming_a_finished_run_prints_its_result_and_changes_nothing(digits_data_dir, finished_run):
    before = _tree(finished_run, skip=(".lock",))  # the lock file names the last job that held it
    proc = run_train(_args(digits_data_dir, finished_run, "train.steps=4", "resume=auto"))
    assert_ok(proc)
    assert "run already complete: it ended at step 4" in proc.stdout, proc.stdout
    result = json.loads((finished_run / "eval.json").read_text())
    assert f"held-out top-1 {result['top1']:.4f}" in proc.stdout
    first = (finished_run.parent / "stdout.txt").read_text().strip().splitlines()[-1]
    assert proc.stdout.strip().splitlines()[-1] == first  # the same result line as at its end
    assert "step 1/" not in proc.stdout  # nothing trained
    assert _tree(finished_run, skip=(".lock",)) == before  # was: the final checkpoint rewritten


def test_an_evaluation_does_not_write_into_a_run_dir(digits_data_dir, finished_run, tmp_path):
    before = _tree(finished_run)
    args = [f"data.val={digits_data_dir}", *TINY, f"checkpoint={finished_run}"]
    proc = run_evaluate([*args, f"output_dir={finished_run}"])
    assert proc.returncode == 2
    assert _one_line(proc).startswith(f"config error: output_dir={finished_run} holds a training run")
    assert _tree(finished_run) == before  # was: the run's eval.json replaced
    assert_ok(run_evaluate([*args, f"output_dir={tmp_path / 'eval'}"]))
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["num_samples"] == 360


def test_output_dir_that_is_a_file_or_under_a_file_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    for out, expected in (
        (afile, f"output_dir={afile} is a file, not a directory"),
        (afile / "run", f"output_dir={afile / 'run'} cannot be created: {afile} is a file"),
    ):
        proc = run_train(["train.steps=1", "logging.wandb=false", f"output_dir={out}"], timeout=120)
        assert proc.returncode == 2
        assert _one_line(proc).startswith(f"config error: {expected}"), proc.stderr
    assert afile.read_text() == "not a directory"


def test_a_second_job_is_refused_while_the_first_runs_and_not_after_it_is_killed(digits_data_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vit_dist.train", "--config", str(ROOT / "configs" / "digits_vit.yaml")]
    first_args = _args(digits_data_dir, out, "train.steps=100000", "checkpoint.every=2", "logging.every=1")
    first = subprocess.Popen(
        [*cmd, *first_args],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its loader workers are killed with it at the end
    )
    try:
        _wait_for(lambda: list(out.glob("checkpoints/step-*/meta.json")), first)
        for extra in (["resume=auto"], []):  # a requeue of it, and a new run
            proc = run_train(_args(digits_data_dir, out, "train.steps=6", *extra), timeout=300)
            assert proc.returncode == 2
            line = _one_line(proc)
            assert line.startswith(
                f"config error: output_dir={out} is in use by another job (pid {first.pid} on"
            )
        os.kill(first.pid, signal.SIGKILL)  # kill -9 of the trainer alone; its workers may linger
        first.wait(timeout=60)
        proc = run_train(_args(digits_data_dir, out, "train.steps=6", "resume=auto"), timeout=300)
        assert_ok(proc)  # the dead job's lock went with it
        assert "resumed from" in proc.stdout
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)


def _wait_for(condition, proc: subprocess.Popen, limit: float = 300.0) -> None:
    """Poll ``condition`` until it holds; fail if ``proc`` ends first or ``limit`` s pass."""
    deadline = time.monotonic() + limit
    while not condition():
        assert proc.poll() is None, f"the first job ended early (exit {proc.returncode})"
        assert time.monotonic() < deadline, "the first job wrote no checkpoint"
        time.sleep(0.2)


@pytest.mark.slow
def test_the_demo_twice_trains_once_and_then_reports(digits_data_dir, tmp_path):
    out = tmp_path / "demo"
    demo = ["bash", str(ROOT / "launch" / "demo.sh"), *_args(digits_data_dir, out, "train.epochs=1")]
    first = run_process(demo, 600, env=env())
    assert_ok(first)
    assert "run already complete" not in first.stdout
    before = _tree(out, skip=(".lock",))
    second = run_process(demo, 600, env=env())
    assert_ok(second)
    assert "run already complete" in second.stdout
    assert second.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]
    assert _tree(out, skip=(".lock",)) == before
    # Asked for fewer steps than it ran: only that it is complete, not a schedule for the new length.
    shorter = run_process([*demo, "train.steps=5"], 600, env=env())
    assert_ok(shorter)
    log = shorter.stdout + shorter.stderr
    assert "and this config asks for 5 steps; nothing to train" in log and "lr schedule" not in log
    assert _tree(out, skip=(".lock",)) == before
