"""Imported once by the loader workers' forkserver when it starts (``runtime/start.py``).

The server preloads torch and the pipeline, so each worker forked from it starts in
milliseconds, and it ignores SIGTERM/SIGUSR1 like the workers: a scheduler signals every
process of a job, and a server killed by a preemption signal would take the live workers'
exit reports with it while the rank is still checkpointing. It exits by itself once the rank
and its workers are gone (multiprocessing's design: each holds the server's alive pipe).
"""

import gc

from . import pipeline  # noqa: F401  (the preload itself)
from .workers import ignore_preemption_signals

ignore_preemption_signals()

# Every worker is forked from here: frozen, the preloaded modules' objects are never visited by a
# worker's garbage collector (which would write to, so copy, every page of the shared torch
# heap: CPython's gc docs recommend this before fork), nor by this server's final collection at
# exit, which otherwise takes about 2 s with torch loaded while the server still holds the
# rank's stdout and stderr open.
gc.freeze()
