"""Shared helpers of the tests that run vit_dist as real processes (1 process, or several via
`accelerate launch` on CPU/gloo)."""

from __future__ import annotations

import contextlib
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
    return run_process(cmd, timeout, env=env(**extra_env))


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (torchrun starts the ranks in their own sessions, so a
    process-group kill of the launcher does not reach them)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def run_process(cmd: list[str], timeout: float, env: dict, **kw) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in the repo root, except that a
    timeout is a test failure that shows where every process of the tree was stuck: each gets
    SIGABRT, which Python's faulthandler (PYTHONFAULTHANDLER) turns into a dump of all its
    threads' stacks on stderr; then the whole tree is killed, so no rank outlives the test."""
    import signal
    import time

    env = {**env, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = _descendants(proc.pid)
        for pid in tree:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGABRT)
        time.sleep(3)  # let faulthandler write
        for pid in [proc.pid, *tree]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired as e:  # a process outside the tree holds the pipes
            out, err = (
                x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr)
            )
            err += "\n[the output pipes are still held open by a process that left the tree]"
        raise AssertionError(
            f"timed out after {timeout} s: {' '.join(cmd)}\nstdout:\n{out[-3000:]}\n"
            f"stderr (stacks of every process):\n{err[-30000:]}"
        ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


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
