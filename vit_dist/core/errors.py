"""The failures a user can see, and the exit code each ends a command with.

Every user-facing failure is a ``VitDistError`` (one of the types below) with a one-line
message, raised where the mistake is detected; the entry points (``vit_dist.cli.command.run_cli``)
print ``<kind>: <message>`` and exit with the code below. The one other kind of one-line
failure is an ``OSError`` (the system refused a file operation). Anything else, a
``ValueError`` from torch included, is a bug: a traceback and exit code 1, never reported as
the user's mistake.

Exit codes (README.md lists the same): 0 done, 1 a bug (the one case with a traceback),
2 config (``EXIT_CONFIG``), 3 data, 4 checkpoint, 5 out of memory, 6 training stopped,
7 another rank of the job died, 8 os error (the system refused a file operation: disk full,
read-only file system, permission, a file where a directory belongs; the line names the path),
75 preempted (checkpoint saved).

This module imports nothing, so a command can report a config mistake before torch loads.
"""

from __future__ import annotations

EXIT_CONFIG, EXIT_DATA, EXIT_CHECKPOINT, EXIT_OOM, EXIT_TRAINING, EXIT_PEER = 2, 3, 4, 5, 6, 7
EXIT_OS = 8  # the system refused a file operation (disk full, read-only, permission, not a directory)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint saved, requeue and resume with resume=auto


class VitDistError(Exception):
    """Base of every failure that is the user's to fix (or a job's fate, like preemption): the
    entry points print it as one line with its kind's exit code (``KINDS``)."""


# The second bases keep ``except ValueError`` / ``except RuntimeError`` callers working where a
# failure used to be one of those; ``run_cli`` matches on the vit_dist type alone.
class ConfigError(VitDistError, ValueError):
    """A bad configuration (unknown key, wrong type, out of range); the message is one line."""


class DataError(VitDistError, ValueError):
    """A data problem the user can fix (a spec that matches nothing, a missing path, too many
    bad samples, a resume position that does not fit); the message names the path or setting."""


class CheckpointError(VitDistError, RuntimeError):
    """A checkpoint that cannot be used (missing, incomplete, or from another model/config)."""


class CheckpointMismatchError(VitDistError, ValueError):
    """A weights file whose tensors do not fit the model (names the offending keys)."""


class TrainingError(VitDistError, RuntimeError):
    """The run cannot continue (e.g. too many non-finite steps); the message says why."""


class Preempted(VitDistError, RuntimeError):
    """SIGUSR1/SIGTERM arrived; a checkpoint was saved and the process should exit (code 75)."""


class SyncInStep(VitDistError, RuntimeError):
    """A train step made the host wait for the GPU while ``train.sync_debug=error``."""


# (exception types, the word printed before the message, exit code), matched in order.
KINDS: tuple[tuple[tuple[type[BaseException], ...], str, int], ...] = (
    ((ConfigError,), "config error", EXIT_CONFIG),
    ((DataError,), "data error", EXIT_DATA),
    ((CheckpointError, CheckpointMismatchError), "checkpoint error", EXIT_CHECKPOINT),
    ((Preempted,), "preempted", EXIT_PREEMPTED),
    ((TrainingError, SyncInStep), "training stopped", EXIT_TRAINING),
    ((FileNotFoundError,), "file not found", EXIT_CONFIG),
    # Any other OSError (ENOSPC, EROFS, EACCES, ENOTDIR, EISDIR, ...): the message names the path
    # and the system's reason (``cli.os_error_line``).
    ((OSError,), "os error", EXIT_OS),
)
