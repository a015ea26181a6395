"""Shared command-line plumbing for ``vit_dist.train`` / ``vit_dist.evaluate``.

User mistakes (bad config, missing shards, unusable checkpoint, out of memory) end the
process with one clear line on rank 0 and a non-zero exit code, never a traceback; all ranks
exit, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

EXIT_CONFIG, EXIT_DATA, EXIT_CHECKPOINT, EXIT_OOM, EXIT_TRAINING, EXIT_PEER = 2, 3, 4, 5, 6, 7
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint saved, requeue and resume with resume=auto


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


def run_cli(main: Callable[[], int]) -> int:
    """Run ``main`` mapping known failure types to one line + an exit code.

    The exception classes are imported only when something failed, so that a config mistake
    is reported before torch is even imported."""

    def fail(kind: str, e: BaseException, code: int) -> int:
        if _rank() == 0 or code not in (EXIT_CONFIG, EXIT_PREEMPTED):  # the same on every rank
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"{kind}: {msg}", file=sys.stderr, flush=True)
        return code

    from . import cpu_malloc

    cpu_malloc.tune()
    try:
        return main()
    except Exception as e:
        from .config import ConfigError

        if isinstance(e, ConfigError):
            return fail("config error", e, EXIT_CONFIG)
        from .checkpoint import CheckpointError
        from .data.errors import DataError
        from .models.pretrained import CheckpointMismatchError
        from .sync_debug import SyncInStep
        from .trainer import Preempted, TrainingError

        if isinstance(e, DataError):
            return fail("data error", e, EXIT_DATA)
        if isinstance(e, (CheckpointError, CheckpointMismatchError)):
            return fail("checkpoint error", e, EXIT_CHECKPOINT)
        if isinstance(e, Preempted):
            return fail("preempted", e, EXIT_PREEMPTED)
        if isinstance(e, (TrainingError, SyncInStep)):
            return fail("training stopped", e, EXIT_TRAINING)
        if isinstance(e, FileNotFoundError):
            return fail("file not found", e, EXIT_CONFIG)
        if isinstance(e, ValueError):  # model keyword errors and similar user mistakes
            return fail("config error", e, EXIT_CONFIG)
        if _peer_lost(e):
            return fail(
                "distributed error",
                RuntimeError(
                    "another process of this job stopped (crashed, killed or out of memory): its "
                    "log has the cause; this rank stops too. The last checkpoint is intact. "
                    f"[{str(e).strip().splitlines()[0][:200]}]"
                ),
                EXIT_PEER,
            )
        if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower()):
            return fail(
                "out of memory",
                RuntimeError(
                    "lower train.batch_size (raise train.grad_accum to keep the global batch), set "
                    "parallel.activation_checkpointing=true, or use parallel.strategy=fsdp / precision=bf16"
                ),
                EXIT_OOM,
            )
        raise
