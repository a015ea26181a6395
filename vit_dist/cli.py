"""Command-line plumbing shared by the entry points (train, evaluate, export, predict).

User mistakes (bad config, missing shards, unusable checkpoint, out of memory) end the
process with one clear line on rank 0 and a non-zero exit code (``vit_dist.errors``), never a
traceback; all ranks exit, so no rank is left waiting in a collective. This module does not
import torch: a config mistake is reported before torch loads.
"""

from __future__ import annotations

import argparse
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


def run_cli(main: Callable[[], int]) -> int:
    """Run ``main`` mapping known failure types to one line + an exit code."""

    def fail(kind: str, e: BaseException, code: int) -> int:
        if _rank() == 0 or code not in (EXIT_CONFIG, EXIT_PREEMPTED):  # the same on every rank
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"{kind}: {msg}", file=sys.stderr, flush=True)
        return code

    try:
        return main()
    except Exception as e:
        for types, kind, code in KINDS:
            if isinstance(e, types):
                return fail(kind, e, code)
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
