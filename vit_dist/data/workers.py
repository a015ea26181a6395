"""The loader worker processes: how they start, what they ignore, and how they never outlive
the process that owns them.

* :func:`start_method` (``runtime/start.py``): fork where CPython forks a multi-threaded
  process safely, else a forkserver (see :func:`fork_is_safe`).
* :func:`worker_init`: workers ignore SIGTERM/SIGUSR1 (the rank owns preemption) and, when
  their OS parent is not the rank (forkserver), end themselves when the rank is gone.
* :func:`guard_timeout`: iterating a DataLoader so that a dead worker is an error within
  ``POLL_S`` seconds and a stall one after ``worker_timeout``.
* :class:`WorkerProgress`: each worker's pid and the sample it is decoding, in shared memory,
  so that a worker that dies (a native crash, the out-of-memory killer) is named with the
  sample it was on, and the ``__main__`` hint goes only to workers that never started.
* at exit, daemonic children still alive are killed (:func:`_kill_lingering_workers`).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from ..core.errors import DataError

# DataLoader's own timeout is a poll interval here: torch checks for dead workers only when a
# wait for a batch times out, so one long wait would also hide a crashed worker that long
# (workers started by a forkserver are not our children: no SIGCHLD reports them).
POLL_S = 5.0
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class WorkerProgress:
    """Where each loader worker of one DataLoader is, in shared memory the rank reads.

    A worker records its pid when its stream starts and the key of each sample while decoding
    it (cleared once the sample is done). When a worker dies, torch names only its pid; this
    maps the pid to the sample. Writing is a copy into a shared tensor, microseconds per
    sample. Built before the workers start: fork inherits the shared pages, a forkserver
    worker receives them through torch's pickling of shared tensors.
    """

    KEY_BYTES = 240  # a longer ``url#key`` is kept by its end (the key, the shard name)

    def __init__(self, num_workers: int):
        self.pids = torch.zeros(num_workers, dtype=torch.int64).share_memory_()
        self.keys = torch.zeros(num_workers, self.KEY_BYTES + 1, dtype=torch.uint8).share_memory_()

    def started(self, worker_id: int) -> None:
        self.pids[worker_id] = os.getpid()

    def decoding(self, worker_id: int, key: str) -> None:
        raw = key.encode(errors="replace")[-self.KEY_BYTES :]
        row = self.keys[worker_id]
        row[1 : 1 + len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        row[0] = len(raw)

    @classmethod
    def recorded_key(cls, key: str) -> str:
        """``key`` as :meth:`decoding` records it (a long one kept by its end)."""
        return key.encode(errors="replace")[-cls.KEY_BYTES :].decode(errors="replace")

    def key_of(self, pid: int) -> str | None:
        """The (recorded) key of the sample the worker ``pid`` was decoding, or None."""
        hits = (self.pids == pid).nonzero().flatten().tolist()
        if not hits or not int(self.keys[hits[0], 0]):
            return None
        n = int(self.keys[hits[0], 0])
        return bytes(self.keys[hits[0], 1 : 1 + n].tolist()).decode(errors="replace")

    def done(self, worker_id: int) -> None:
        self.keys[worker_id, 0] = 0

    def any_started(self) -> bool:
        return bool(self.pids.ne(0).any())

    def describe(self, pid: int) -> str | None:
        """``loader worker W (pid P) died while decoding KEY`` (or between samples), or None
        for a pid that no worker of this loader recorded."""
        hits = (self.pids == pid).nonzero().flatten().tolist()
        if not hits:
            return None
        w = hits[0]
        n = int(self.keys[w, 0])
        where = (
            f"while decoding {bytes(self.keys[w, 1 : 1 + n].tolist()).decode(errors='replace')}"
            if n
            else "between samples"
        )
        return f"loader worker {w} (pid {pid}) died {where}"


class WorkerDied(DataError):
    """A loader worker died (a signal: a native crash, the OOM killer). ``keys``: the samples
    the dead workers were decoding, as :class:`WorkerProgress` recorded them (empty when none
    was decoding one)."""

    def __init__(self, line: str, keys: list[str]):
        super().__init__(line)
        self.keys = keys


def _pids(message: str) -> list[int]:
    first = message.strip().splitlines()[0]
    m = re.search(r"pid(?:\(s\))? ([\d, ]+)", first)
    return [int(p) for p in re.findall(r"\d+", m[1])] if m else []


def worker_death_line(message: str, spec: str, method: str | None, progress: WorkerProgress | None) -> str:
    """The one line for torch's "DataLoader worker (pid(s) ...) exited unexpectedly" or "...
    is killed by signal: X" error: the sample the worker was on when the progress knows it, the
    ``__main__`` hint only where no worker ever started under forkserver/spawn (a script
    without the guard: its workers die while importing it)."""
    first = message.strip().splitlines()[0]
    pids = (
        [int(p) for p in re.findall(r"\d+", m[1])]
        if (m := re.search(r"pid(?:\(s\))? ([\d, ]+)", first))
        else []
    )
    named = [d for d in (progress.describe(p) for p in pids) if d] if progress is not None else []
    signal_part = (
        m2[1].strip().rstrip(".") if (m2 := re.search(r"killed by signal: ([^.]*)", first)) else None
    )
    if named:
        how = f" ({signal_part})" if signal_part else ""
        return (
            f"{'; '.join(named)}{how} reading {spec}: a crash in a native library (an image decoder) "
            "or the out-of-memory killer ends a worker this way; its error, if any, is above"
        )
    if method in ("forkserver", "spawn") and (progress is None or not progress.any_started()):
        return (
            f"{first} reading {spec} (its error is above; with the {method} start method a script "
            "that trains must start from `if __name__ == '__main__':`)"
        )
    return f"{first} reading {spec} (its error, if any, is above)"


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


# torch's "This DataLoader will create N worker processes in total ..." warning, which it gives
# twice (building the loader and starting its iterator) and then for every new loader: the
# shard loader says it once itself (``ShardLoader``, naming data.workers and the cores).
_TORCH_WORKER_COUNT = r"This DataLoader will create \d+ worker processes in total"


@contextlib.contextmanager
def torch_worker_count_quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCH_WORKER_COUNT, category=UserWarning)
        yield


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. a SLURM or container limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def guard_timeout(
    loader: DataLoader,
    timeout: float,
    spec: str,
    method: str | None,
    progress: WorkerProgress | None = None,
) -> Iterator[dict]:
    """Iterate ``loader`` (built with :func:`dataloader_timeout`): a dead worker is a one-line
    DataError within ``POLL_S`` (:func:`worker_death_line`), no batch for ``timeout`` seconds
    another."""
    with torch_worker_count_quiet():
        it = iter(loader)
    waited_since = time.monotonic()
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as e:
            msg = str(e)
            if "exited unexpectedly" in msg or "killed by signal" in msg:
                keys = (
                    [k for k in (progress.key_of(p) for p in _pids(msg)) if k] if progress is not None else []
                )
                raise WorkerDied(worker_death_line(msg, spec, method, progress), keys) from None
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
