"""How loader workers start, decided without torch, so that an entry point can start the
workers' forkserver before it imports torch itself.

Where CPython cannot fork a multi-threaded process safely (:func:`fork_is_safe`), workers are
forked from a forkserver that preloads torch and the pipeline (``data/forkserver_init.py``):
starting it costs about as much as importing torch. :func:`prestart` starts it at once, so that
this import runs beside the rank's own start-up (imports, process group, model, data plan)
instead of between the rank being ready and its first batch.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import sys

# Imported by the forkserver when it starts: torch and the pipeline once, signals ignored.
FORKSERVER_PRELOAD = "vit_dist.data.forkserver_init"


def fork_is_safe(version: tuple = tuple(sys.version_info[:3])) -> bool:
    """Whether this CPython forks a multi-threaded process without risking a deadlocked child.

    Before 3.10.15 and 3.11.10 (gh-112275), a child forked at the moment another thread was
    creating or deleting its Python thread state inherits the runtime lock held and waits for
    it forever in ``PyOS_AfterFork_Child``. A training process always has such threads: gloo's
    run loops call into Python, loader queue feeder threads start and end. The symptom: a rank
    waits forever for a loader worker stuck right after fork.
    """
    return version >= (3, 12) or (3, 11, 10) <= version < (3, 12) or (3, 10, 15) <= version < (3, 11)


def start_method(name: str) -> str | None:
    """The loader workers' multiprocessing start method for the setting ``name``.

    "auto": fork on Linux when :func:`fork_is_safe` (workers start in milliseconds, sharing the
    imported modules), otherwise forkserver: workers are forked from a single-threaded server
    started once per process with the pipeline preloaded, so they also start in milliseconds
    after the first (which takes about as long as importing torch). Elsewhere, the platform
    default.
    """
    if name == "auto":
        if sys.platform != "linux":
            return None
        name = "fork" if fork_is_safe() else "forkserver"
    if name == "forkserver":
        # Takes effect when the server starts (the first forkserver worker of this process).
        multiprocessing.get_context("forkserver").set_forkserver_preload([FORKSERVER_PRELOAD])
    return name


def prestart(workers: int, name: str = "auto") -> None:
    """Start the loader workers' forkserver now when ``workers`` processes will be forked from
    one (``start_method(name) == "forkserver"``); otherwise nothing. The first loader then finds
    it running (multiprocessing starts one server per process, whoever asks first)."""
    if workers > 0 and start_method(name) == "forkserver":
        multiprocessing.forkserver.ensure_running()
