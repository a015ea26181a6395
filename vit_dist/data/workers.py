"""The loader worker processes: how they start, what they ignore, and how they never outlive
the process that owns them.

* :func:`start_method` (``runtime/start.py``): fork where CPython forks a multi-threaded
  process safely, else a forkserver (see :func:`fork_is_safe`).
* :func:`worker_init`: workers ignore SIGTERM/SIGUSR1 (the rank owns preemption) and, when
  their OS parent is not the rank (forkserver), end themselves when the rank is gone.
* :func:`guard_timeout`: iterating a DataLoader so that a dead worker is an error within
  ``POLL_S`` seconds and a stall one after ``worker_timeout``.
* at exit, daemonic children still alive are killed (:func:`_kill_lingering_workers`).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator

from torch.utils.data import DataLoader

from ..core.errors import DataError

# DataLoader's own timeout is a poll interval here: torch checks for dead workers only when a
# wait for a batch times out, so one long wait would also hide a crashed worker that long
# (workers started by a forkserver are not our children: no SIGCHLD reports them).
POLL_S = 5.0
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of every loader worker.

    Workers ignore SIGTERM/SIGUSR1: a scheduler sends them to every process of a job, and the
    rank must outlive them long enough to checkpoint (it owns preemption).

    torch ends a worker whose OS parent has died. A forkserver worker's OS parent is the server,
    which lives as long as any of its children, so a rank killed with SIGKILL (OOM killer,
    kill -9) would leave its workers and the server behind for good, holding the job's output
    pipes. Such a worker watches the rank itself and exits when it is gone.
    """
    ignore_preemption_signals()
    owner = multiprocessing.parent_process()  # the rank, whatever started the process
    if owner is not None and owner.pid != os.getppid():
        threading.Thread(target=_exit_with, args=(owner,), name="vit_dist-owner-watch", daemon=True).start()


def ignore_preemption_signals() -> None:
    """SIGTERM/SIGUSR1 ignored: for the workers and their forkserver (forkserver_init)."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _exit_with(owner) -> None:
    owner.join()  # returns when the owner's end of the sentinel pipe closes: it exited
    os._exit(1)


def dataloader_timeout(worker_timeout: float, num_workers: int) -> float:
    """The ``timeout`` to build the DataLoader with, for :func:`guard_timeout`: one poll."""
    return min(worker_timeout, POLL_S) if num_workers > 0 and worker_timeout > 0 else 0


def guard_timeout(loader: DataLoader, timeout: float, spec: str, method: str | None) -> Iterator[dict]:
    """Iterate ``loader`` (built with :func:`dataloader_timeout`): a dead worker is a one-line
    DataError within ``POLL_S``, no batch for ``timeout`` seconds another."""
    it = iter(loader)
    waited_since = time.monotonic()
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as e:
            msg = str(e)
            if "exited unexpectedly" in msg:
                hint = (
                    f"; with the {method} start method a script that trains must start from "
                    "`if __name__ == '__main__':`"
                    if method in ("forkserver", "spawn")
                    else ""
                )
                raise DataError(f"{msg.splitlines()[0]} reading {spec} (its error is above{hint})") from None
            if "timed out" not in msg:
                raise
            if timeout > 0 and time.monotonic() - waited_since < timeout:
                continue  # a timed-out wait leaves the iterator as it was: wait again
            raise DataError(
                f"no batch from the loader workers for {timeout:.0f} s reading {spec} (stalled shard reads?); "
                f"see worker_timeout"
            ) from None
        waited_since = time.monotonic()
        yield batch


def _kill_lingering_workers() -> None:
    """At interpreter exit, SIGKILL daemonic children (loader workers) that are still alive.

    A loader iterator is normally shut down when it is released. When an unexpected exception
    ends the process, the traceback can keep it alive until exit; multiprocessing's own exit
    hook then sends its daemonic children SIGTERM -- which our workers ignore, see above -- and
    joins them: the process would hang forever (e.g. a rank stopping because another crashed).
    Registered after multiprocessing's hook, so it runs first (atexit is last-in, first-out).
    Every daemonic child is killed, not only loader workers (the process objects do not say
    what they run once started); multiprocessing would SIGTERM them at this point anyway.
    """
    for child in multiprocessing.active_children():
        if child.daemon and child.is_alive():
            child.kill()


atexit.register(_kill_lingering_workers)
