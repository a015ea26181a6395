"""Command-line plumbing shared by the entry points (train, evaluate, export, predict).

User mistakes (bad config, missing shards, unusable checkpoint, out of memory) and a file
operation the system refuses (disk full, read-only file system, no permission: ``os error``,
naming the path and the reason) end the process with one clear line on rank 0 and a non-zero
exit code (``vit_dist.errors``), never a traceback; all ranks exit, so no rank is left waiting
in a collective. Exit code 1 with a traceback is left for bugs. This module does not
import torch: a config mistake is reported before torch loads.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable

from .errors import EXIT_CONFIG, EXIT_OOM, EXIT_PEER, EXIT_PREEMPTED, KINDS


def parse_args(prog: str, argv: list[str] | None) -> tuple[str | None, list[str]]:
    p = argparse.ArgumentParser(
        prog=prog,
        description="key=value overrides use dotted config keys, e.g. train.epochs=3 optim.lr=1e-3",
    )
    p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    return args.config, args.overrides


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def setup_logging() -> None:
    level = logging.INFO if _rank() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout)
    for noisy in ("torch", "accelerate", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_PEER_LOST = (
    "closed by peer",
    "reset by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
)


def _peer_lost(e: BaseException) -> bool:
    """A collective failed because another rank's process went away (gloo / NCCL wording)."""
    return isinstance(e, RuntimeError) and any(s in str(e) for s in _PEER_LOST)


_ROOM = "free disk space, or point output_dir (or the path named) at a disk with room"
_WRITABLE = "choose a writable location (e.g. another output_dir) or fix its permissions"
# What to do about the OSErrors a run meets in practice, by errno (anything else: the reason only).
_OS_HINTS = {
    errno.ENOSPC: _ROOM,
    errno.EDQUOT: _ROOM,
    errno.EROFS: "the file system is read-only: " + _WRITABLE,
    errno.EACCES: "permission denied: " + _WRITABLE,
    errno.EPERM: "operation not permitted: " + _WRITABLE,
    errno.ENOTDIR: "a component of the path is a file where a directory is needed",
    errno.EISDIR: "the path is a directory where a file is needed",
}


def os_error_line(e: OSError) -> str:
    """One line for an OSError: the path(s), the system's reason with its errno name, and what
    to do, e.g. ``/runs/x/checkpoints/step-5: No space left on device (ENOSPC); free disk ...``.
    A write to an already open file fails without a path; the line then says so."""
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    reason = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
    name = errno.errorcode.get(e.errno) if isinstance(e.errno, int) else None
    line = f"{reason} ({name})" if name else reason
    line = f"{' -> '.join(paths)}: {line}" if paths else f"{line} (the system did not name the file)"
    hint = _OS_HINTS.get(e.errno)
    return f"{line}; {hint}" if hint else line


def _out_of_memory(e: BaseException) -> bool:
    """Host or device memory ran out: MemoryError, torch's CUDA OOM, or its CPU allocator failing
    (``DefaultCPUAllocator: can't allocate memory``)."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def run_cli(main: Callable[[], int]) -> int:
    """Run ``main`` mapping known failure types to one line + an exit code."""

    def fail(kind: str, message: str, code: int) -> int:
        if _rank() == 0 or code not in (EXIT_CONFIG, EXIT_PREEMPTED):  # the same on every rank
            print(f"{kind}: {message}", file=sys.stderr, flush=True)
        return code

    try:
        return main()
    except Exception as e:
        for types, kind, code in KINDS:
            if isinstance(e, types):
                # FileNotFoundError keeps its own kind and wording (a path the user gave).
                plain_os = isinstance(e, OSError) and not isinstance(e, FileNotFoundError)
                return fail(kind, os_error_line(e) if plain_os else _first_line(e), code)
        if _peer_lost(e):
            return fail(
                "distributed error",
                "another process of this job stopped (crashed, killed or out of memory): its "
                "log has the cause; this rank stops too. The last checkpoint is intact. "
                f"[{str(e).strip().splitlines()[0][:200]}]",
                EXIT_PEER,
            )
        if _out_of_memory(e):
            return fail(
                "out of memory",
                "lower train.batch_size (raise train.grad_accum to keep the global batch), set "
                "parallel.activation_checkpointing=true, or use parallel.strategy=fsdp / precision=bf16",
                EXIT_OOM,
            )
        raise
