"""Command-line plumbing shared by the entry points (train, evaluate, export, predict).

User mistakes (bad config, missing shards, unusable checkpoint, out of memory) and a file
operation the system refuses (disk full, read-only file system, no permission: ``os error``,
naming the path and the reason) end the process with one clear line on rank 0 and a non-zero
exit code (``vit_dist.core.errors``), never a traceback; all ranks exit, so no rank is left waiting
in a collective. Exit code 1 with a traceback is left for bugs. This module does not
import torch: a config mistake is reported before torch loads.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from ..core.errors import EXIT_CONFIG, EXIT_OOM, EXIT_PEER, EXIT_PREEMPTED, KINDS, ConfigError
from ..core.options import FALSE_WORDS, TRUE_WORDS, did_you_mean
from .help import Key, config_keys, render_config_help, render_keys

_HELP = ("-h", "--help")
_OPTION_WORD = re.compile(r"[A-Za-z_][\w.]*=")  # a "key=value" word (options.split_options)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one line and exit code 2, like every config mistake."""

    def error(self, message: str):
        _usage_error(f"{message} (see {self.prog} --help)")


def _usage_error(message: str):
    if _rank() == 0:  # the same on every rank of a launch
        print(f"config error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def undash(
    argv: Sequence[str], keys: Sequence[Key], *, valued_flags: Sequence[str] = (), free: Sequence[str] = ()
) -> list[str]:
    """argparse's habit, ``--optim.lr 1e-3`` and ``--optim.lr=1e-3``, -> ``optim.lr=1e-3``.

    ``keys``: the keys a dashed word may name (ConfigError with the closest one otherwise);
    ``free``: prefixes of free keys (``model.``). A bare ``--key`` of a true/false key means true
    (the next word is its value only when it is a true/false word); any other key takes the next
    word as its value, also a negative number (``--optim.lr -1`` reaches validation), and one
    that is missing (nothing follows, or another option does) is a ConfigError.
    ``valued_flags``: the parser's own options that take a value (``--config``): kept, with it.
    """
    by_name = {k.key: k for k in keys if "<" not in k.key}
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":  # everything after it is positional
            out += argv[i - 1 :]
            break
        if word in valued_flags and i < len(argv):
            out += [word, argv[i]]
            i += 1
            continue
        if not word.startswith("--") or word.split("=", 1)[0] in valued_flags:  # not a key
            out.append(word)
            continue
        name, eq, value = word[2:].partition("=")
        if name not in by_name and not any(name.startswith(p) and len(name) > len(p) for p in free):
            known = [f"--{n}" for n in by_name] + [f for f in valued_flags if f.startswith("--")]
            raise ConfigError(f"unknown option '--{name}'{did_you_mean('--' + name, known)}")
        if not eq:
            following = argv[i] if i < len(argv) else None
            if name in by_name and by_name[name].is_bool:
                value = "true"
                if following is not None and following.strip().lower() in (*TRUE_WORDS, *FALSE_WORDS):
                    value, i = following, i + 1
            elif (
                following is None
                or (following.startswith("-") and not _is_number(following))
                or (_OPTION_WORD.match(following) and not os.path.exists(following))
            ):
                raise ConfigError(f"--{name} needs a value: --{name} VALUE, --{name}=VALUE or {name}=VALUE")
            else:
                value, i = following, i + 1
        out.append(f"{name}={value}")
    return out


def parse_args(
    prog: str,
    argv: list[str] | None,
    *,
    options: Sequence[Key] = (),
    config: bool = True,
    description: str = "Train a model.",
    words: str = "[key=value ...]",
    words_help: str = "the keys listed below, as key=value",
    help_keys: Sequence[str] | None = None,
) -> tuple[str | None, list[str]]:
    """The command line of an entry point: ``(--config path or None, the other words)``, where
    each dashed option became ``key=value``. ``--help`` lists ``options`` (the command's own
    ``key=value`` options) and, with ``config``, the config keys (``vit_dist.cli.help``): every
    one, or those ``help_keys`` names (a key, or a prefix ending in ``.``) when the command
    uses only some. Every config key is still accepted (a training YAML serves as --config)."""
    sections = []
    if options:
        name = prog.split(".")[-1]
        sections.append(f"{name} options (key=value, --key value or --key=value):\n{render_keys(options)}")
    if config:
        sections.append(render_config_help(help_keys))
    p = _Parser(
        prog=prog,
        usage=f"{prog} [-h]{' [--config FILE]' if config else ''} {words}",
        description=description,
        epilog="\n\n".join(sections),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if config:
        p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument("words", nargs="*", metavar="WORD", help=words_help)
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(w in _HELP for w in argv):
        p.parse_args(["--help"])  # prints the reference and exits 0
    keys = list(options)
    flags: tuple[str, ...] = ()
    free: tuple[str, ...] = ()
    if config:  # the config's keys, the free model keywords, and --config FILE
        keys, flags, free = [*keys, *config_keys()], ("--config", "-c"), ("model.",)
    try:
        argv = undash(argv, keys, valued_flags=flags, free=free)
    except ConfigError as e:
        _usage_error(str(e))
    args = p.parse_intermixed_args(argv)
    return getattr(args, "config", None), args.words


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


_ROOM = "free disk space, or point output_dir (or the path named) at a disk with room"
_WRITABLE = "choose a writable location (e.g. another output_dir) or fix its permissions"
# What to do about the OSErrors a run meets in practice, by errno (anything else: the reason only).
_OS_HINTS = {
    errno.ENOSPC: _ROOM,
    errno.EDQUOT: _ROOM,
    errno.EROFS: "the file system is read-only: " + _WRITABLE,
    errno.EACCES: "permission denied: " + _WRITABLE,
    errno.EPERM: "operation not permitted: " + _WRITABLE,
    errno.ENOTDIR: "a component of the path is a file where a directory is needed",
    errno.EISDIR: "the path is a directory where a file is needed",
}


def os_error_line(e: OSError) -> str:
    """One line for an OSError: the path(s), the system's reason with its errno name, and what
    to do, e.g. ``/runs/x/checkpoints/step-5: No space left on device (ENOSPC); free disk ...``.
    A write to an already open file fails without a path; the line then says so."""
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    reason = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
    name = errno.errorcode.get(e.errno) if isinstance(e.errno, int) else None
    line = f"{reason} ({name})" if name else reason
    line = f"{' -> '.join(paths)}: {line}" if paths else f"{line} (the system did not name the file)"
    hint = _OS_HINTS.get(e.errno) if e.errno is not None else None
    return f"{line}; {hint}" if hint else line


def _out_of_memory(e: BaseException) -> bool:
    """Host or device memory ran out: MemoryError, torch's CUDA OOM, or its CPU allocator failing
    (``DefaultCPUAllocator: can't allocate memory``)."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def exit_process(code: int) -> NoReturn:
    """End an entry point's process (its ``if __name__ == "__main__"`` block) with ``code``.

    The command is over, so the interpreter's final garbage collection need not walk every
    object that torch and its imports created: frozen first, the exit takes under 1 s instead of
    about 2.7 s on a 2-core machine, paid by every launch and every rank. Nothing relies on that
    collection: files are closed and sinks finished explicitly, atexit handlers still run.
    Only for a process that is about to end (in-process callers such as tests keep their GC).
    """
    gc.freeze()
    sys.exit(code)


def run_cli(main: Callable[[], int]) -> int:
    """Run ``main`` mapping known failure types to one line + an exit code."""

    def fail(kind: str, message: str, code: int) -> int:
        if _rank() == 0 or code not in (EXIT_CONFIG, EXIT_PREEMPTED):  # the same on every rank
            print(f"{kind}: {message}", file=sys.stderr, flush=True)
        _tell_the_launcher(f"{kind}: {message}")
        return code

    try:
        return main()
    except Exception as e:
        for types, kind, code in KINDS:
            if isinstance(e, types):
                # FileNotFoundError keeps its own kind and wording (a path the user gave).
                if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
                    return fail(kind, os_error_line(e), code)
                return fail(kind, _first_line(e), code)
        if _peer_lost(e):
            return fail(
                "distributed error",
                "another process of this job stopped (crashed, killed or out of memory): its "
                "log has the cause; this rank stops too. The last checkpoint is intact. "
                f"[{str(e).strip().splitlines()[0][:200]}]",
                EXIT_PEER,
            )
        if _out_of_memory(e):
            return fail(
                "out of memory",
                "lower train.batch_size (raise train.grad_accum to keep the global batch), set "
                "parallel.activation_checkpointing=true, or use parallel.strategy=fsdp / precision=bf16",
                EXIT_OOM,
            )
        _tell_the_launcher(f"{type(e).__name__}: {e}", traceback.format_exc())  # a bug: its traceback
        raise


def _tell_the_launcher(message: str, callstack: str | None = None) -> None:
    """Under torchrun (also inside `accelerate launch`), write why this rank ends into the error
    file the agent named (``TORCHELASTIC_ERROR_FILE``, torch elastic's own JSON layout), so that
    its ``ChildFailedError`` summary shows our one line (or a bug's traceback) for the rank that
    failed first, instead of "To enable traceback see ...". Best effort: the exit code stands."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {
        "message": {
            "message": message,
            "extraInfo": {"py_callstack": callstack or message, "timestamp": str(int(time.time()))},
        }
    }
    try:
        with open(path, "w") as fh:
            json.dump(data, fh)
    except OSError:
        pass  # the line on stderr and the exit code still say it
