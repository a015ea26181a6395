"""``train.sync_debug``: catch host-device synchronisations inside training steps (CUDA).

A train step should queue its work on the GPU and return at once; any ``.item()``,
``bool(tensor)``, data-dependent shape (``nonzero``, boolean indexing) or blocking copy makes the
host wait for the device and leaves the GPU idle while the next step is being prepared. The
trainer's loop only synchronises at logging steps (metrics) and around evaluation and
checkpoints, outside the guarded region.

``sync_guard(mode)`` turns on torch's sync debug mode (``torch.cuda.set_sync_debug_mode``) for
the body of one train step: ``"warn"`` prints a warning naming the line, ``"error"`` stops the
run with a ``SyncInStep`` naming the first line that synchronised. ``"off"`` and non-CUDA
devices do nothing (a CPU has no asynchronous device to wait for).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

import torch

from ..core.errors import SyncInStep

MODES = ("off", "warn", "error")


def _where(exc: BaseException) -> str:
    """The innermost Python frame of the traceback: the line that asked for the sync."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown location"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} ({f.line})"


@contextlib.contextmanager
def sync_guard(mode: str, device: torch.device, step: int) -> Iterator[None]:
    """Run the body with torch's sync debug mode at ``mode`` on CUDA; restores the previous mode."""
    if mode not in MODES:
        raise ValueError(f"sync_debug must be one of {MODES}, not {mode!r}")
    if mode == "off" or device.type != "cuda":
        yield
        return
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    except RuntimeError as e:
        if "synchronizing" not in str(e):
            raise
        raise SyncInStep(
            f"train.sync_debug=error: step {step} made the host wait for the GPU at {_where(e)}"
        ) from e
    finally:
        torch.cuda.set_sync_debug_mode(prev)
