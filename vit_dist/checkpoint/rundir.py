"""A run owns its output directory: one job at a time, and a new run never touches another's files.

``claim_output_dir`` is the first thing a training job does with ``output_dir``, before it
writes anything there. Rank 0:

1. creates the directory (one line, not a traceback, when it is a file, lies under a file, or
   cannot be created or written);
2. takes an exclusive ``flock`` on ``output_dir/.lock`` and keeps it for the life of the job.
   The OS drops it when the process ends, however it ends (``kill -9`` included), so a
   requeued job is never blocked by a stale lock. A second job refuses, naming the holder
   (host, pid, SLURM job id, start time), which the holder writes into the lock file. A file
   system without lock support gets one warning and the job goes on unlocked;
3. looks at what the directory holds. A run there (``run.json``, ``config.yaml``,
   ``metrics.jsonl``, ``eval.jsonl`` or a non-empty ``checkpoints/``) may only be continued:
   with ``resume=auto`` or ``resume=`` one of its own checkpoints. A new run refuses,
   naming the directory, its last checkpoint and the two ways on, before writing anything.

Rank 0 decides and broadcasts the outcome: every rank goes on with the same run id, or raises
the same ``ConfigError``. The run id lives in ``run.json`` (id, creation time, host), written
once the run starts writing. A continued run keeps it, and every checkpoint's meta carries it.
The end of a run is recorded there too (``finished_step``), so resuming a finished run can
report it instead of training again.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from ..core import atomic
from ..core.errors import CheckpointError, ConfigError
from ..core.files import load_json_object, short
from ..runtime.distributed import DistEnv, broadcast_object
from .store import CKPT_DIR, RUN_MARKER, checkpoint_step, holds_a_run, latest_checkpoint, run_below

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# What a run writes first: any of them means the directory holds a run (checkpoints/ when
# it has any entry).
RUN_FILES = (RUN_MARKER, "config.yaml", "metrics.jsonl", "eval.jsonl")
# errno values of flock() on a file system that does not do locks (e.g. Lustre mounted without
# -o flock answers ENOSYS; some FUSE and NFS set-ups ENOLCK or EOPNOTSUPP).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- the lock

# Locks this process holds. A process forked while one is held (a data-loader worker) closes its
# copy of the descriptor at once: a flock belongs to the open file, so a worker that outlived a
# killed trainer for a few seconds would otherwise keep the lock, and a requeued job would be
# refused. Closing a copy never releases the lock of the process that took it.
_HELD: weakref.WeakSet[DirLock] = weakref.WeakSet()


def _forget_locks_in_child() -> None:
    for lock in list(_HELD):
        lock.forget()


os.register_at_fork(after_in_child=_forget_locks_in_child)


class DirLock:
    """An exclusive ``flock`` on ``directory/.lock`` (``locked`` is False on a file system
    without locks). Released by ``release()``, when the object is collected, or by the OS when
    the process ends."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        self.fd = -1
        self.locked = False

    def acquire(self) -> None:
        """Take the lock or raise ConfigError naming the job that holds it."""
        try:
            # Never truncated on open: the holder's name stays readable until a job has the lock.
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ConfigError(
                f"output_dir={self.path.parent} is not writable ({e.strerror}): choose another output_dir"
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise ConfigError(
                f"output_dir={self.path.parent} is in use by another job ({describe_holder(self.path)}): "
                "wait for it to end, or use another output_dir"
            ) from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                self.release()
                raise ConfigError(
                    f"output_dir={self.path.parent}: cannot lock {self.path} ({e.strerror})"
                ) from None
            log.warning(
                "warning: the file system of output_dir=%s does not support locks (%s): a second job "
                "writing into it at the same time would not be stopped",
                self.path.parent,
                e.strerror,
            )
            return
        self.locked = True
        _HELD.add(self)

    def write_holder(self) -> None:
        """Name this job in the lock file (what a refused second job prints)."""
        if not self.locked:
            return
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": _now(),
        }
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(self.fd)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # closing the last descriptor of the open file drops the flock
        self.fd, self.locked = -1, False
        _HELD.discard(self)

    def forget(self) -> None:
        """In a forked child: close the inherited descriptor without unlocking (LOCK_UN would
        release the parent's lock, which shares the open file)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd, self.locked = -1, False

    def __del__(self) -> None:
        self.release()


def describe_holder(lock_path: Path) -> str:
    """'pid P on HOST, SLURM job J, since T' from the lock file (the holder may not have written
    it yet in the first milliseconds of its claim)."""
    try:
        holder = load_json_object(lock_path, limit=64 * 1024, error=CheckpointError, what="lock file")
        text = f"pid {int(holder['pid'])} on {short(holder['host'])}"
    except (CheckpointError, ValueError, KeyError, TypeError):
        return "a job that has not written its name into .lock yet"
    if holder.get("slurm_job_id"):
        text += f", SLURM job {holder['slurm_job_id']}"
    if holder.get("started"):
        text += f", since {holder['started']}"
    return text


# ---------------------------------------------------------------------------- the directory


def make_output_dir(out: Path) -> None:
    """Create ``out`` (and its parents); ConfigError in one line when that is impossible."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out} is a file, not a directory: choose another output_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), out)
        raise ConfigError(
            f"output_dir={out} cannot be created: {blocker} is a file: choose another output_dir"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"output_dir={out} cannot be created ({e.strerror}): choose another output_dir"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):  # also false on a read-only file system
        raise ConfigError(f"output_dir={out} is not writable: choose another output_dir")


def existing_run(out: Path) -> str | None:
    """What ``out`` holds of a run, in a few words ('last checkpoint step 10; run.json,
    config.yaml'), or None when it holds none."""
    files = [name for name in RUN_FILES if (out / name).exists()]
    ckpt_root = out / CKPT_DIR
    has_ckpts = ckpt_root.is_dir() and any(ckpt_root.iterdir())
    if not files and not has_ckpts:
        return None
    latest = latest_checkpoint(out)
    what = f"last checkpoint step {checkpoint_step(latest)}" if latest else "no complete checkpoint"
    if has_ckpts:
        files.append(f"{CKPT_DIR}/")
    return f"{what}; {', '.join(files)}"


def read_marker(out: Path) -> dict | None:
    """run.json, or None when it is missing or unreadable."""
    try:
        marker = load_json_object(
            out / RUN_MARKER, limit=1024 * 1024, error=CheckpointError, what="run marker"
        )
    except CheckpointError:
        return None
    return marker if isinstance(marker, dict) and marker.get("run_id") else None


def _continues_this_dir(resume: str | None, out: Path) -> bool:
    """Whether ``resume`` continues the run in ``out`` (auto, or one of its own checkpoints)."""
    if not resume:
        return False
    if resume == "auto":
        return True
    return Path(resume).resolve().is_relative_to(out.resolve())


# ---------------------------------------------------------------------------- the claim


@dataclass
class RunClaim:
    """A job's hold on its output directory: the run id, whether run.json is still to be
    written, the step the run's end was recorded at (None: it has not ended), and (rank 0) the
    lock, kept until ``release``. The same on every rank."""

    output_dir: Path
    run_id: str
    marker_missing: bool
    finished_step: int | None = None
    lock: DirLock | None = field(default=None, repr=False)

    def write_marker(self) -> None:
        """Rank 0, once the run starts writing: run.json for a new run (or a continued one that
        had none)."""
        if self.marker_missing:
            marker = {"run_id": self.run_id, "created": _now(), "host": socket.gethostname()}
            atomic.write_json(self.output_dir / RUN_MARKER, marker)
            self.marker_missing = False

    def record_finished(self, step: int) -> None:
        """Rank 0, after the final checkpoint, export and eval.json: the run ended at ``step``."""
        marker = read_marker(self.output_dir) or {"run_id": self.run_id, "host": socket.gethostname()}
        atomic.write_json(self.output_dir / RUN_MARKER, {**marker, "finished_step": step, "finished": _now()})

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _elastic_hint() -> str:
    """torchrun restarts the ranks with the same command line: without ``resume=auto`` every
    restart after a lost node or a failed rank is refused here, until its restarts run out."""
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restarts.isdigit() and int(restarts) > 0:
        return (
            f" (this is restart {restarts} of an elastic launch: put resume=auto on its command "
            "line so that a restart continues the run)"
        )
    return ""


def claim_output_dir(out: str | os.PathLike, env: DistEnv, *, resume: str | None) -> RunClaim:
    """Collective: lock ``out`` for this job and decide the run id (see the module docstring).
    Raises ConfigError on every rank alike when the job may not use ``out``."""
    out = Path(out)
    outcome, lock = None, None
    if env.is_main:
        try:
            outcome, lock = _claim_on_main(out, resume)
        except (ConfigError, OSError) as e:
            outcome = {"error": str(e) if isinstance(e, ConfigError) else f"output_dir={out}: {e}"}
    outcome = broadcast_object(outcome)
    if "error" in outcome:
        raise ConfigError(outcome["error"])
    return RunClaim(out, outcome["run_id"], outcome["marker_missing"], outcome["finished_step"], lock)


def nesting_problem(out: Path) -> str | None:
    """Why ``out`` may not be a run's directory because of another run: it lies inside one (an
    ancestor has run.json or checkpoints), or holds one below it. Pruning or replacing files of
    either run would destroy the other's."""
    here = out.resolve()
    outer = next((p for p in here.parents if holds_a_run(p)), None)
    if outer is not None:
        return f"output_dir={out} lies inside the run directory {outer}"
    inner = run_below(here) if here.is_dir() else None
    if inner is not None:
        return f"output_dir={out} holds another run's directory, {inner}"
    return None


def _claim_on_main(out: Path, resume: str | None) -> tuple[dict, DirLock]:
    nested = nesting_problem(out)
    if nested:
        raise ConfigError(f"{nested}: runs never nest; choose an output_dir outside every run directory")
    make_output_dir(out)
    lock = DirLock(out)
    lock.acquire()
    try:
        held = existing_run(out)
        if held and not _continues_this_dir(resume, out):
            raise ConfigError(
                f"output_dir={out} already holds a run ({held}): continue it with resume=auto, "
                "or start afresh with another output_dir (or delete this one)" + _elastic_hint()
            )
        marker = read_marker(out) if held else None
        lock.write_holder()
    except BaseException:
        lock.release()
        raise
    if marker:
        return {
            "run_id": marker["run_id"],
            "marker_missing": False,
            "finished_step": marker.get("finished_step"),
        }, lock
    return {"run_id": uuid.uuid4().hex, "marker_missing": True, "finished_step": None}, lock
