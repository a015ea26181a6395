"""Never lose a checkpoint, never die on a damaged one: the manifest in meta.json and what it
catches, resume=auto falling back past a damaged checkpoint, resume=PATH / evaluate refusing one
(exit 4, one line), pickles with code refused, disk-full saves, same-step saves killed between
their renames, pruning and best/ kept to their own run lineage, stray ``step-*`` folders.

Most tests save tiny models in this process (no training); two run the real commands."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import assert_ok, read_jsonl, run_evaluate, run_train
from support.checkpoint import _reseal, _RunsCode, _truncate

from vit_dist.checkpoint import store as ck

# ---------------------------------------------------------------- the manifest


# ---------------------------------------------------------------- resume and load


# ---------------------------------------------------------------- saving


# ---------------------------------------------------------------- FSDP: dcp/ files


# ---------------------------------------------------------------- the commands


def _train_args(data, out, *extra, steps=14):
    return [
        f"data.train={data}",
        f"data.val={data}",
        f"train.steps={steps}",
        "checkpoint.every=5",
        f"output_dir={out}",
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        "train.batch_size=16",
        "data.workers=1",
        "logging.every=1",
        "logging.wandb=false",
        "eval.every=0",
        *extra,
    ]


def _one_error_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("checkpoint error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_truncated_newest_checkpoint_resume_falls_back_and_matches(digits_data_dir, tmp_path):
    ref = tmp_path / "ref"
    assert_ok(run_train(_train_args(digits_data_dir, ref)))

    out = tmp_path / "run"
    proc = run_train(_train_args(digits_data_dir, out), VIT_DIST_FAULT="kill@12")
    assert proc.returncode != 0
    newest = out / "checkpoints" / "step-00000010"
    _truncate(newest / "state.pt")  # what a power loss can leave

    proc = run_train(_train_args(digits_data_dir, out, f"resume={newest}"))
    assert proc.returncode == 4
    assert "step-00000010 is damaged: state.pt is" in _one_error_line(proc)

    proc = run_train(_train_args(digits_data_dir, out, "resume=auto"))
    assert_ok(proc)
    log = proc.stdout + proc.stderr
    assert len([line for line in log.splitlines() if "is damaged" in line]) == 1
    assert "resuming from" in log and "step-00000005" in log
    a, b = ({m["step"]: m["loss"] for m in read_jsonl(d / "metrics.jsonl")} for d in (ref, out))
    assert sorted(a) == sorted(b) and all(abs(a[s] - b[s]) <= 1e-6 for s in a), (a, b)
    ck.verify_checkpoint(newest, full=True)  # saved again over the damaged one


@pytest.mark.slow
def test_commands_refuse_a_missing_or_code_running_checkpoint(digits_data_dir, tmp_path):
    proc = run_evaluate(
        [f"data.val={digits_data_dir}", "checkpoint=/no/such/path", f"output_dir={tmp_path / 'eval'}"]
    )
    assert proc.returncode == 4
    assert "checkpoint=/no/such/path: no such file or directory" in _one_error_line(proc)

    out = tmp_path / "run"
    assert_ok(run_train(_train_args(digits_data_dir, out, steps=2)))
    evil = tmp_path / "evil" / "checkpoints" / "step-00000002"
    shutil.copytree(out / "checkpoints" / "step-00000002", evil)
    marker = tmp_path / "ran"
    torch.save({"model": _RunsCode(marker), "optim": {}}, evil / "state.pt")
    _reseal(evil, "state.pt")

    proc = run_train(_train_args(digits_data_dir, tmp_path / "new", f"resume={evil}", steps=4))
    assert proc.returncode == 4 and "never runs code" in _one_error_line(proc)
    proc = run_evaluate(
        [f"data.val={digits_data_dir}", f"checkpoint={evil}", f"output_dir={tmp_path / 'eval'}"]
    )
    assert proc.returncode == 4 and "never runs code" in _one_error_line(proc)
    assert not marker.exists()
