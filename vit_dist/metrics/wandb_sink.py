"""Weights & Biases for the run logger: which mode to use, and one W&B run started, logged to
and finished so that W&B can never hang a job, prompt for a key or stop a run.

wandb is only imported when W&B is enabled, only goes online when a key is configured (the
environment or a netrc entry; checked here without importing wandb), and any W&B failure is
reported on one line and the run carries on without it: the JSONL files are the record that
counts. The run id is kept in ``wandb_run_id.txt`` so a resumed run continues the same W&B run;
each resumed process then writes its own offline directory, and ``finish`` prints how to
upload them all in order.

System metrics (``logging.system_metrics``, on by default) are W&B's own sampler, which runs in
wandb's service process, not in the training process: ``log`` only hands it records, so a slow
or failing sampler cannot block a step, and ``finish`` waits for that process at most
``FINISH_TIMEOUT_S``.
"""

from __future__ import annotations

import netrc
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from ..core.atomic import write_text
from .jsonl import as_number
from .sink import scalars

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

WANDB_ID_FILE = "wandb_run_id.txt"
# The longest ``finish`` waits for wandb's service (uploads, the last system-metric samples);
# what is not uploaded by then stays in the run's local files for ``wandb sync``.
FINISH_TIMEOUT_S = 300.0


def wandb_key_configured() -> bool:
    """True when W&B can authenticate without a prompt: WANDB_API_KEY or a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(requested: str) -> str:
    """``"online"``, ``"offline"`` or ``"disabled"`` for a requested ``auto|offline|online``.

    An explicit ``WANDB_MODE=disabled`` or ``offline`` (``dryrun``) in the environment always
    wins: it is how a cluster job says "no network here", and going online there would only
    time out. Online also needs a configured key, since otherwise wandb would prompt for one
    on a TTY (or fail after a delay without one); a request for online without a key is
    downgraded to offline by the caller with a warning.
    """
    requested = (requested or "auto").lower()
    if requested not in ("auto", "offline", "online"):
        raise ValueError(f"wandb_mode must be 'auto', 'offline' or 'online', got {requested!r}")
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env == "disabled":
        return "disabled"
    if env in ("offline", "dryrun") or requested == "offline":
        return "offline"
    if requested == "online":
        return "online"
    return "online" if wandb_key_configured() else "offline"


def new_run_id() -> str:
    """Our own run id (W&B's style: 8 lowercase base-36 characters), so it is known before init
    and the offline fallback after a failed online init keeps the same id."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def setting_names(wandb) -> set[str]:
    """The names ``wandb.Settings`` takes: pydantic fields since 0.19, annotations before."""
    fields = getattr(wandb.Settings, "model_fields", None)
    if fields:
        return set(fields)
    names: set[str] = set()
    for klass in getattr(wandb.Settings, "__mro__", ()):
        names.update(getattr(klass, "__annotations__", {}))
    return names


def wandb_settings(wandb, mode: str, *, system_metrics: bool = True, system_interval: float = 15.0):
    """Quiet, bounded settings, using only the names (and values) this wandb version takes.

    System metrics (GPU utilisation, memory, power, CPU, disk, network) are sampled by wandb's
    own service process every ``system_interval`` seconds: a slow or failing sampler there
    never blocks a training step, since ``log`` only hands records to that process.
    ``finish_timeout`` bounds how long ``finish`` may wait for that process at the end.
    """
    names = setting_names(wandb)
    wanted: dict[str, Any] = {
        "silent": True,  # wandb's own banner/warnings only; our messages go through info()
        "console": "off",  # no stdout/stderr wrapping: keeps tqdm and SLURM logs intact
        "init_timeout": 60.0 if mode == "online" else 30.0,
        "finish_timeout": FINISH_TIMEOUT_S,  # the rest stays in the offline files, for wandb sync
        "reinit": "finish_previous",  # a second logger in one process replaces the first
    }
    # Whether and how often to sample: renamed across versions (>= 0.19: x_...; 0.18: _...).
    for name in ("x_disable_stats", "_disable_stats"):
        if name in names:
            wanted[name] = not system_metrics
            break
    if system_metrics:
        for name in ("x_stats_sampling_interval", "_stats_sampling_interval", "_stats_sample_rate_seconds"):
            if name in names:
                wanted[name] = float(system_interval)
                if name == "_stats_sample_rate_seconds":  # older still: it averaged N samples per point
                    wanted["_stats_samples_to_average"] = 1
                break
    wanted = {key: value for key, value in wanted.items() if key in names}
    try:
        return wandb.Settings(**wanted)
    except Exception:
        pass
    # A value this version refuses (e.g. 0.18's boolean ``reinit``): keep each one it takes.
    kept = {}
    for key, value in wanted.items():
        try:
            wandb.Settings(**{key: value})
        except Exception:
            continue
        kept[key] = value
    try:
        return wandb.Settings(**kept)
    except Exception:
        return wandb.Settings(silent=True, console="off")


def offline_segments(output_dir: Path, run_id: str) -> list[str]:
    """Offline run directories of ``run_id`` under output_dir/wandb, oldest first."""
    # wandb names a segment offline-run-<YYYYmmdd_HHMMSS>-<id>, and adds "-1", "-2", ... when
    # that name is taken (a resumed process that starts within the same second).
    pattern = re.compile(rf"offline-run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}(?:-(\d+))?")
    found = []
    root = output_dir / "wandb"
    for path in root.glob("offline-run-*") if root.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if match and path.is_dir():
            found.append(((match.group(1), int(match.group(2) or 0)), str(path)))
    return [path for _, path in sorted(found)]


class WandbSink:
    """The W&B run of one run logger, a ``MetricSink``: ``start`` it, log to it, ``finish`` it.

    Train records go under ``train/``, evaluations under ``eval/``, the best-so-far summary into
    the run's summary. Every message (warnings, the run's URL, how to sync an offline run) goes
    through ``info``, the logger's printer. Until ``start`` succeeds, and after any failure,
    ``run`` is None and logging and ``finish`` do nothing; ``mode`` is ``"disabled"`` until then.
    """

    def __init__(self, info: Callable[[str], None]) -> None:
        self.info = info
        self.run: Run | None = None
        self.mode: str = "disabled"  # the mode actually in use after resolution/fallback
        self.run_dir: str | None = None
        self.output_dir: Path | None = None
        self._settings: dict[str, Any] = {}

    def start(
        self,
        output_dir: Path,
        mode: str,
        *,
        project: str,
        entity: str | None,
        run_name: str | None,
        config: dict,
        resuming: bool,
        system_metrics: bool = True,
        system_interval: float = 15.0,
    ) -> None:
        """Start a run in ``mode`` (from ``resolve_wandb_mode``) writing under ``output_dir``;
        ``resuming`` continues the run whose id is in ``wandb_run_id.txt``; ``system_metrics``
        turns W&B's system charts on, sampled every ``system_interval`` seconds."""
        self.output_dir = output_dir
        self._settings = dict(system_metrics=system_metrics, system_interval=system_interval)
        try:
            self._start(output_dir, mode, project, entity, run_name, config, resuming)
        except Exception as e:  # W&B trouble never stops a run
            self.info(f"warning: wandb set-up failed ({type(e).__name__}: {e}); not logging to W&B")
            self.run, self.mode, self.run_dir = None, "disabled", None

    def _start(
        self,
        output_dir: Path,
        requested: str,
        project: str,
        entity: str | None,
        run_name: str | None,
        config: dict,
        resuming: bool,
    ) -> None:
        if requested == "disabled":
            return
        if requested not in ("online", "offline"):
            raise ValueError(f"wandb mode {requested!r}: expected one resolve_wandb_mode returns")
        mode: Literal["online", "offline"] = "online" if requested == "online" else "offline"
        if mode == "online" and not wandb_key_configured():
            self.info("warning: wandb online requested but no WANDB_API_KEY or netrc entry; logging offline")
            mode = "offline"
        try:
            # Imported here: wandb is optional and slow to import; a run without W&B never loads it.
            import wandb
        except Exception as e:  # a broken install must not stop training
            self.info(f"warning: wandb unavailable ({type(e).__name__}: {e}); not logging to W&B")
            return

        id_file = output_dir / WANDB_ID_FILE
        run_id = None
        if resuming and id_file.exists():
            run_id = id_file.read_text().strip() or None
        resume = "allow" if run_id else None
        run_id = run_id or new_run_id()

        init_kwargs: dict[str, Any] = dict(
            project=project,
            entity=entity,
            name=run_name or output_dir.name,
            config=dict(config or {}),
            dir=str(output_dir),
            id=run_id,
            resume=resume,
        )
        run = None
        try:
            run = wandb.init(mode=mode, settings=wandb_settings(wandb, mode, **self._settings), **init_kwargs)
        except Exception as e:
            if mode != "online":
                self.info(f"warning: wandb init failed ({type(e).__name__}: {e}); not logging to W&B")
                return
            self.info(f"warning: wandb online init failed ({type(e).__name__}: {e}); logging offline")
        if run is None:
            mode = "offline"
            try:
                run = wandb.init(
                    mode=mode, settings=wandb_settings(wandb, mode, **self._settings), **init_kwargs
                )
            except Exception as e:
                self.info(f"warning: wandb offline init failed ({type(e).__name__}: {e}); not logging to W&B")
                return

        self.run = run
        self.mode = mode
        self.run_dir = str(run.settings.sync_dir)
        write_text(id_file, run.id + "\n")
        if mode == "online" and getattr(run, "url", None):
            self.info(f"wandb: {run.url}")

    def log_train(self, step: int | None, record: dict) -> None:
        self.log(scalars("train", record), step)

    def log_eval(self, step: int | None, record: dict) -> None:
        self.log(scalars("eval", record), step)

    def log(self, data: dict, step: Any) -> None:
        """Log the numeric values of ``data`` at ``step``; on failure, warn once and stop W&B."""
        if self.run is None:
            return
        data = {
            key: value for key, value in data.items() if as_number(value) is not None
        }  # charts want numbers
        try:
            self.run.log(data, step=int(step) if as_number(step) is not None else None)
        except Exception as e:
            # One warning, then W&B is dropped: the JSONL files still have everything.
            self.info(f"warning: wandb log failed ({type(e).__name__}: {e}); W&B logging stopped")
            self.finish(quiet=True)

    def summarize(self, summary: dict) -> None:
        """Set the numeric values of ``summary`` in the run's summary (beside the last logged
        values W&B keeps there itself); on failure, warn once and stop W&B."""
        data = {key: value for key, value in summary.items() if as_number(value) is not None}
        if self.run is None or not data:
            return
        try:
            self.run.summary.update(data)
        except Exception as e:
            self.info(f"warning: wandb summary failed ({type(e).__name__}: {e}); W&B logging stopped")
            self.finish(quiet=True)

    def finish(self, quiet: bool = False) -> None:
        """Close the run; unless ``quiet``, print its URL or how to upload its offline segments."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            # Flush and close now rather than in wandb's atexit hook, where a slow service delays exit.
            run.finish()
        except Exception as e:
            self.info(f"warning: wandb finish failed ({type(e).__name__}: {e})")
        if quiet:
            return
        if self.mode == "offline" and self.run_dir:
            self.info(f"wandb: offline run saved; upload it with:\n  wandb sync {self.run_dir}")
            # A run exists only after start, which set output_dir.
            segments = offline_segments(self.output_dir, run.id) if self.output_dir is not None else []
            if len(segments) > 1:
                # Each resumed process writes its own offline directory for the same run id.
                self.info(
                    f"wandb: this run has {len(segments)} offline segments; upload all in order with:\n"
                    f"  wandb sync --id {run.id} " + " ".join(segments)
                )
        elif self.mode == "online" and getattr(run, "url", None):
            self.info(f"wandb: {run.url}")
