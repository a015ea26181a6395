"""Imported once by the loader workers' forkserver when it starts (``runtime/start.py``).

The server preloads torch and the pipeline, so each worker forked from it starts in
milliseconds, and it ignores SIGTERM/SIGUSR1 like the workers: a scheduler signals every
process of a job, and a server killed by a preemption signal would take the live workers'
exit reports with it while the rank is still checkpointing. It exits by itself once the rank
and its workers are gone (multiprocessing's design: each holds the server's alive pipe).
"""

from . import pipeline  # noqa: F401  (the preload itself)
from .workers import ignore_preemption_signals

ignore_preemption_signals()
