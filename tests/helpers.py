"""Shared helpers of the tests that run vit_dist as real processes (1 process, or several via
`accelerate launch` on CPU/gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits_vit.yaml"


def env(**extra) -> dict:
    """The test processes' environment: W&B offline, one thread per process, unbuffered."""
    out = dict(os.environ)
    out.update({"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(nproc: int) -> list[str]:
    """`accelerate launch` of nproc CPU processes on this machine (needs ACCELERATE_USE_CPU=1)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(nproc),
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
    ]


def run_module(module: str, args: list[str], nproc: int = 1, timeout: int = 600, config=CONFIG, **extra_env):
    """``python -m module --config config args`` in 1 process or under accelerate launch."""
    cmd = [sys.executable] if nproc == 1 else launch_cmd(nproc)
    cmd += ["-m", module, "--config", str(config), *args]
    if nproc > 1:
        extra_env = {"ACCELERATE_USE_CPU": "1", **extra_env}
    return subprocess.run(
        cmd, cwd=ROOT, env=env(**extra_env), capture_output=True, text=True, timeout=timeout
    )


def run_train(
    args: list[str], nproc: int = 1, timeout: int = 600, **extra_env
) -> subprocess.CompletedProcess:
    return run_module("vit_dist.train", args, nproc, timeout, **extra_env)


def run_evaluate(args: list[str], nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_module("vit_dist.evaluate", args, nproc, timeout)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a .jsonl file ([] when it does not exist yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
