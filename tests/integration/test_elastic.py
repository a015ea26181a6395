"""A node lost under elastic launch: two torchrun agents (``--nnodes=1:2``, c10d rendezvous) on
this machine, one process each (CPU, gloo). Right after step 12 the node that does not host the
rendezvous store loses its agent and its rank at once (``kill_node``: SIGKILL to both, as when a
machine goes down). The surviving agent restarts its rank at world size 1; the run resumes from
the step-10 checkpoint, re-plans the rest of the epoch and finishes it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys

import pytest
from helpers import _descendants, assert_ok, env, free_port, read_jsonl, run_train
from resume_helpers import losses_by_step, resume_args
from support.launch import ROOT

# Steps: 1437 samples, batch 16. 2 ranks: ceil(ceil(1437 / 2) / 16) = 45 steps per epoch. Killed
# after step 12, resumed from step 10 on 1 rank: 1437 - 10 x 2 x 16 = 1117 samples are left,
# ceil(1117 / 16) = 70 steps, so the epoch ends at step 80.
KILLED_AFTER, CHECKPOINT, LEFT, LAST = 12, 10, 1117, 80


def _agent(args: list[str], port: int, hosts_store: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1:2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=elastic-test",
        # Which agent hosts the store is pinned: the store dies with its agent. A short last call:
        # the survivor's second round closes 5 s after it alone has joined (the first round
        # closes at once, when both have).
        f"--rdzv-conf=is_host={int(hosts_store)},last_call_timeout=5,join_timeout=120",
        "--max-restarts=2",
        "--monitor-interval=0.5",
        "-m",
        "vit_dist.train",
        "--config",
        str(ROOT / "configs" / "digits_vit.yaml"),
        *args,
    ]


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                for pid in [p.pid, *_descendants(p.pid)]:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                p.wait()


def _printed_losses(text: str) -> dict[int, float]:
    """``step N/M ep E loss L ...`` lines of a rank-0 log: {N: L}."""
    return {int(m[1]): float(m[2]) for m in re.finditer(r"^step (\d+)/45 ep \d+ loss ([\d.]+)", text, re.M)}


@pytest.mark.slow
@pytest.mark.multiproc
def test_a_lost_node_leaves_the_survivor_to_finish_at_world_size_1(digits_data_dir, tmp_path):
    def args(out):
        return [
            *resume_args(digits_data_dir, out, steps=1, every=5, extra=["resume=auto"]),
            "train.steps=null",
            "train.epochs=1",
        ]

    ref = tmp_path / "ref"  # the uninterrupted run at world size 2
    assert_ok(run_train(args(ref), nproc=2))

    out, port = tmp_path / "elastic", free_port()
    logs = {name: open(tmp_path / f"{name}.log", "w+") for name in ("survivor", "lost")}  # noqa: SIM115
    try:
        lost = subprocess.Popen(
            _agent(args(out), port, hosts_store=False),
            cwd=ROOT,
            env=env(
                ACCELERATE_USE_CPU="1",
                VIT_DIST_FAULT=f"kill_node@{KILLED_AFTER}:0,kill_node@{KILLED_AFTER}:1",
            ),
            stdout=logs["lost"],
            stderr=subprocess.STDOUT,
        )
        survivor = subprocess.Popen(
            _agent(args(out), port, hosts_store=True),
            cwd=ROOT,
            env=env(ACCELERATE_USE_CPU="1"),
            stdout=logs["survivor"],
            stderr=subprocess.STDOUT,
        )
        lost_rc, survivor_rc = _wait_all([lost, survivor], timeout=400)
        text = {}
        for name, f in logs.items():
            f.seek(0)
            text[name] = f.read()
    finally:
        for f in logs.values():
            f.close()
    assert lost_rc == -signal.SIGKILL, text["lost"][-3000:]
    assert survivor_rc == 0, text["survivor"][-5000:]
    log = text["survivor"]

    # The survivor's rank saw its peer vanish (one line), and its agent restarted it alone.
    assert "distributed error: another process of this job stopped" in log
    assert f"world size changed since {out / 'checkpoints' / 'step-00000010'} (2 -> 1)" in log
    assert f"{LEFT} samples of it are left" in log
    assert f"resumed from {out / 'checkpoints' / 'step-00000010'} at step {CHECKPOINT}" in log

    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, LAST + 1))  # every step once, in order
    size = {m["step"]: m["world_size"] for m in metrics}
    assert {size[s] for s in range(1, CHECKPOINT + 1)} == {2}
    assert {size[s] for s in range(CHECKPOINT + 1, LAST + 1)} == {1}
    # The epoch was finished, not cut or repeated: 10 x 32 + 70 x 16 rows (1437 samples + 3 padding,
    # as at world size 2: 45 x 32), and it ended at the re-planned step.
    assert metrics[-1]["samples_seen"] == CHECKPOINT * 32 + (LAST - CHECKPOINT) * 16 == 45 * 32
    assert [m["epoch"] for m in metrics] == [0] * LAST
    result = json.loads((out / "eval.json").read_text())
    assert result["step"] == LAST and result["epoch"] == 1 and result["num_samples"] == 360

    # Up to the kill the run is the uninterrupted one: the kept steps to 1e-6, and the two steps
    # after the checkpoint (lost with the node, so only in rank 0's log) to the printed digits.
    a, b = losses_by_step(ref), losses_by_step(out)
    assert all(abs(a[s] - b[s]) <= 1e-6 for s in range(1, CHECKPOINT + 1)), (a, b)
    printed = _printed_losses(text["survivor"] + text["lost"])  # rank 0 is on either node
    assert sorted(printed) == list(range(1, KILLED_AFTER + 1))
    assert all(f"{printed[s]:.4f}" == f"{a[s]:.4f}" for s in printed), (printed, a)
