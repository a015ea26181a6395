"""Run metrics: the rank-0 run logger (JSONL files, progress display, W&B, final curves PNG),
step timing, peak memory, peak FLOP/s and MFU.

Nothing here talks to ``torch.distributed``: the trainer passes ``is_main`` and every
``RunLogger`` method is a cheap no-op on the other ranks, so logging can never add a
collective (and never deadlock a rank that skipped it).

Files written under ``output_dir`` (rank 0 only):

- ``metrics.jsonl``: one JSON object per ``log_train`` call, flushed at once so a crash
  loses at most the line being written.
- ``eval.jsonl``: one JSON object per ``log_eval`` call; ``eval.json``: the final evaluation.
- ``curves.png``: train loss, learning rate, eval top-1 and images/s against the step, drawn
  from the two JSONL files so a resumed run's picture covers all its segments.
- ``wandb_run_id.txt`` and ``wandb/``: the W&B run id (reused on resume) and W&B's files.

W&B must never hang a job or prompt for a key: it is only imported when enabled, only goes
online when a key is configured, and any W&B failure is reported on one line and the run
carries on without it (the JSONL files are the record that counts).
"""

from __future__ import annotations

import json
import math
import netrc
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

__all__ = ["RunLogger", "StepTimer", "max_memory_mb", "mfu", "peak_flops"]

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
FINAL_EVAL_FILE = "eval.json"
CURVES_FILE = "curves.png"
WANDB_ID_FILE = "wandb_run_id.txt"


# --------------------------------------------------------------------------------------------
# JSONL helpers
# --------------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    # Records may carry 0-d tensors or numpy scalars straight from the training loop.
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, (Path, torch.dtype, torch.device)):
        return str(obj)
    return repr(obj)


def _dumps(record: dict) -> str:
    return json.dumps(record, default=_json_default, separators=(",", ":"))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL file; a torn last line (a crash mid-write) is skipped."""
    out: list[dict] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out


def _truncate_jsonl(path: Path, start_step: int) -> None:
    """Keep the records with ``step <= start_step`` (all dropped when ``start_step == 0``).

    A resumed run restarts from the checkpoint at ``start_step``; the lines logged after that
    checkpoint by the interrupted process are superseded and would otherwise be duplicated.
    """
    if not path.exists():
        return
    if start_step <= 0:
        kept: list[dict] = []
    else:
        kept = [
            r
            for r in read_jsonl(path)
            if not (isinstance(r.get("step"), (int, float)) and r["step"] > start_step)
        ]
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(_dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)  # atomic: a crash here leaves either the old or the new file


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _fmt_hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--:--"
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fmt(value: Any, spec: str) -> str:
    v = _num(value)
    return "-" if v is None else format(v, spec)


def _fmt_epoch(value: Any) -> str:
    v = _num(value)
    if v is None or not math.isfinite(v):
        return "-"
    return str(int(v)) if v == int(v) else f"{v:.2f}"


# --------------------------------------------------------------------------------------------
# W&B mode resolution (no wandb import needed)
# --------------------------------------------------------------------------------------------


def _wandb_key_configured() -> bool:
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
    return "online" if _wandb_key_configured() else "offline"


# --------------------------------------------------------------------------------------------
# RunLogger
# --------------------------------------------------------------------------------------------


class RunLogger:
    """Rank-0 sink for a run's metrics: metrics.jsonl, eval.jsonl, progress display, W&B, final PNG.

    On non-main ranks every method is a cheap no-op (and nothing is written or imported).
    ``start_step > 0`` marks a resumed run: the JSONL files keep their lines up to
    ``start_step`` and are appended to, and the W&B run id in ``wandb_run_id.txt`` is reused
    with ``resume="allow"``. ``start_step == 0`` is a fresh run: the files start empty and a
    new W&B run is created (the old one would drop every step up to its last one).
    """

    def __init__(
        self,
        output_dir: str,
        *,
        is_main: bool,
        total_steps: int,
        config: dict,
        wandb_enabled: bool = True,
        wandb_mode: str = "auto",
        project: str = "vit_dist",
        entity: str | None = None,
        run_name: str | None = None,
        progress: str = "auto",
        start_step: int = 0,
    ):
        self.is_main = bool(is_main)
        self.wandb_run_dir: str | None = None
        self.wandb_mode: str = "disabled"  # the mode actually in use after resolution/fallback
        self._run = None
        self._bar = None
        self._finished = False
        # Argument errors are raised on every rank alike: failing on rank 0 only would leave
        # the other ranks waiting in their first collective.
        if progress not in ("auto", "bar", "lines"):
            raise ValueError(f"progress must be 'auto', 'bar' or 'lines', got {progress!r}")
        if str(wandb_mode).lower() not in ("auto", "offline", "online"):
            raise ValueError(f"wandb_mode must be 'auto', 'offline' or 'online', got {wandb_mode!r}")
        if not self.is_main:
            return
        self.output_dir = Path(output_dir).absolute()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self._last_step = self.start_step

        self.metrics_path = self.output_dir / METRICS_FILE
        self.eval_path = self.output_dir / EVAL_FILE
        for path in (self.metrics_path, self.eval_path):
            _truncate_jsonl(path, self.start_step)
        # Kept open for the whole run (closed in finish) and flushed per record, so the files
        # can be tailed while the run is going and a crash loses at most one line.
        self._metrics_f = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self._eval_f = open(self.eval_path, "a", encoding="utf-8")  # noqa: SIM115

        if wandb_enabled:
            mode = resolve_wandb_mode(wandb_mode)
            try:
                self._init_wandb(mode, project, entity, run_name, config)
            except Exception as e:  # W&B trouble never stops a run
                self.info(f"warning: wandb set-up failed ({type(e).__name__}: {e}); not logging to W&B")
                self._run, self.wandb_mode, self.wandb_run_dir = None, "disabled", None

        # The bar and the ETA clock start after the W&B set-up (about a second), as close to the
        # first step as this object gets.
        self._t0 = time.perf_counter()
        use_bar = progress == "bar" or (progress == "auto" and _isatty(sys.stdout))
        if use_bar:
            from tqdm import tqdm

            # smoothing=0: the ETA is remaining steps x mean time per step of this process,
            # the same rule as the plain lines (tqdm's rate excludes ``initial``).
            self._bar = tqdm(
                total=self.total_steps,
                initial=min(self.start_step, self.total_steps),
                file=sys.stdout,
                dynamic_ncols=True,
                smoothing=0,
                unit="step",
                desc="train",
            )

    # ---------------------------------------------------------------- W&B

    def _init_wandb(self, mode: str, project: str, entity: str | None, run_name: str | None, config: dict):
        if mode == "disabled":
            return
        if mode == "online" and not _wandb_key_configured():
            self.info("warning: wandb online requested but no WANDB_API_KEY or netrc entry; logging offline")
            mode = "offline"
        try:
            import wandb
        except Exception as e:  # a broken install must not stop training
            self.info(f"warning: wandb unavailable ({type(e).__name__}: {e}); not logging to W&B")
            return

        id_file = self.output_dir / WANDB_ID_FILE
        run_id = None
        if self.start_step > 0 and id_file.exists():
            run_id = id_file.read_text().strip() or None
        resume = "allow" if run_id else None
        run_id = run_id or _new_run_id()

        kwargs = dict(
            project=project,
            entity=entity,
            name=run_name or self.output_dir.name,
            config=dict(config or {}),
            dir=str(self.output_dir),
            id=run_id,
            resume=resume,
        )
        run = None
        try:
            run = wandb.init(mode=mode, settings=_wandb_settings(wandb, mode), **kwargs)
        except Exception as e:
            if mode != "online":
                self.info(f"warning: wandb init failed ({type(e).__name__}: {e}); not logging to W&B")
                return
            self.info(f"warning: wandb online init failed ({type(e).__name__}: {e}); logging offline")
        if run is None:
            mode = "offline"
            try:
                run = wandb.init(mode=mode, settings=_wandb_settings(wandb, mode), **kwargs)
            except Exception as e:
                self.info(f"warning: wandb offline init failed ({type(e).__name__}: {e}); not logging to W&B")
                return

        self._run = run
        self.wandb_mode = mode
        self.wandb_run_dir = str(run.settings.sync_dir)
        id_file.write_text(run.id + "\n")
        if mode == "online" and getattr(run, "url", None):
            self.info(f"wandb: {run.url}")

    def _wandb_log(self, data: dict, step: Any) -> None:
        if self._run is None:
            return
        data = {k: v for k, v in data.items() if _num(v) is not None}  # W&B charts want numbers
        try:
            self._run.log(data, step=int(step) if _num(step) is not None else None)
        except Exception as e:
            # One warning, then W&B is dropped: the JSONL files still have everything.
            self.info(f"warning: wandb log failed ({type(e).__name__}: {e}); W&B logging stopped")
            self._finish_wandb(quiet=True)

    def _finish_wandb(self, quiet: bool = False) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        try:
            # Flush and close now rather than in wandb's atexit hook, where a slow service delays exit.
            run.finish()
        except Exception as e:
            self.info(f"warning: wandb finish failed ({type(e).__name__}: {e})")
        if quiet:
            return
        if self.wandb_mode == "offline" and self.wandb_run_dir:
            self.info(f"wandb: offline run saved; upload it with:\n  wandb sync {self.wandb_run_dir}")
            segments = _offline_segments(self.output_dir, run.id)
            if len(segments) > 1:
                # Each resumed process writes its own offline directory for the same run id.
                self.info(
                    f"wandb: this run has {len(segments)} offline segments; upload all in order with:\n"
                    f"  wandb sync --id {run.id} " + " ".join(segments)
                )
        elif self.wandb_mode == "online" and getattr(run, "url", None):
            self.info(f"wandb: {run.url}")

    # ---------------------------------------------------------------- public API

    def log_train(self, record: dict) -> None:
        """Append ``record`` to metrics.jsonl, update the progress display, log to W&B."""
        if not self.is_main or self._finished:
            return
        self._metrics_f.write(_dumps(record) + "\n")
        self._metrics_f.flush()

        step = record.get("step")
        istep = int(step) if _num(step) is not None else self._last_step
        if self._bar is not None:
            if istep > self._bar.n:
                self._bar.update(istep - self._bar.n)
            self._bar.set_postfix_str(
                f"ep {_fmt_epoch(record.get('epoch'))} loss {_fmt(record.get('loss'), '.4f')} "
                f"lr {_fmt(record.get('lr'), '.1e')} img/s {_fmt(record.get('images_per_sec'), '.0f')}",
                refresh=True,
            )
        else:
            print(self._train_line(record, istep), flush=True)
        self._last_step = istep

        self._wandb_log({f"train/{k}": v for k, v in record.items() if k != "step"}, step)

    def _train_line(self, record: dict, step: int) -> str:
        done = step - self.start_step
        eta = None
        if done > 0:
            eta = (time.perf_counter() - self._t0) / done * max(self.total_steps - step, 0)
        return (
            f"step {step}/{self.total_steps} ep {_fmt_epoch(record.get('epoch'))} "
            f"loss {_fmt(record.get('loss'), '.4f')} lr {_fmt(record.get('lr'), '.1e')} "
            f"img/s {_fmt(record.get('images_per_sec'), '.0f')} eta {_fmt_hms(eta)}"
        )

    def log_eval(self, record: dict) -> None:
        """Append ``record`` to eval.jsonl, print a one-line summary, log to W&B under ``eval/``."""
        if not self.is_main or self._finished:
            return
        self._eval_f.write(_dumps(record) + "\n")
        self._eval_f.flush()
        parts = [f"eval step {record.get('step', '-')}"]
        if "epoch" in record:
            parts.append(f"ep {_fmt_epoch(record['epoch'])}")
        for key, value in record.items():
            if key in ("step", "epoch", "num_samples"):
                continue
            v = _num(value)
            parts.append(f"{key} {v:.4g}" if v is not None else f"{key} {value}")
        if "num_samples" in record:
            parts.append(f"({record['num_samples']} samples)")
        self.info(" ".join(parts))
        self._wandb_log({f"eval/{k}": v for k, v in record.items() if k != "step"}, record.get("step"))

    def info(self, msg: str) -> None:
        """Print on rank 0 without breaking the progress bar."""
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def finish(self, final_eval: dict | None = None) -> None:
        """Write eval.json and curves.png, close the bar and the W&B run (prints how to sync)."""
        if not self.is_main or self._finished:
            return
        self._finished = True
        self._metrics_f.close()
        self._eval_f.close()
        if final_eval is not None:
            tmp = self.output_dir / (FINAL_EVAL_FILE + ".tmp")
            tmp.write_text(json.dumps(final_eval, default=_json_default, indent=2) + "\n")
            os.replace(tmp, self.output_dir / FINAL_EVAL_FILE)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        try:
            png = plot_curves(self.output_dir)
            self.info(f"curves: {png}")
        except Exception as e:  # a plotting problem must not cost the end of a long run
            self.info(f"warning: could not draw curves ({type(e).__name__}: {e})")
        self._finish_wandb()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.finish(None)


def _new_run_id() -> str:
    # Our own id (W&B's style: 8 lowercase base-36 characters) so it is known before init
    # and the offline fallback after a failed online init keeps the same id.
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _wandb_settings(wandb, mode: str):
    """Quiet, fast settings, using only the names this wandb version has."""
    fields = set(getattr(wandb.Settings, "model_fields", {}) or ())
    wanted: dict[str, Any] = {
        "silent": True,  # wandb's own banner/warnings only; our messages go through info()
        "console": "off",  # no stdout/stderr wrapping: keeps tqdm and SLURM logs intact
        "init_timeout": 60.0 if mode == "online" else 30.0,
        "reinit": "finish_previous",  # a second logger in one process replaces the first
    }
    # System-metrics sampling (a background sampler per run); renamed across versions.
    for name in ("x_disable_stats", "_disable_stats"):
        if not fields or name in fields:
            wanted[name] = True
            break
    if fields:
        wanted = {k: v for k, v in wanted.items() if k in fields}
    try:
        return wandb.Settings(**wanted)
    except Exception:
        return wandb.Settings(silent=True, console="off")


def _offline_segments(output_dir: Path, run_id: str) -> list[str]:
    """Offline run directories of ``run_id`` under output_dir/wandb, oldest first."""
    # wandb names a segment offline-run-<YYYYmmdd_HHMMSS>-<id>, and adds "-1", "-2", ... when
    # that name is taken (a resumed process that starts within the same second).
    pattern = re.compile(rf"offline-run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}(?:-(\d+))?")
    found = []
    root = output_dir / "wandb"
    for p in root.glob("offline-run-*") if root.is_dir() else ():
        m = pattern.fullmatch(p.name)
        if m and p.is_dir():
            found.append(((m.group(1), int(m.group(2) or 0)), str(p)))
    return [path for _, path in sorted(found)]


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    # Sorted and de-duplicated by step (the last record of a step wins), so files from runs
    # resumed by older code, or with an interrupted truncation, still draw cleanly.
    by_step: dict[float, float] = {}
    for r in records:
        s, v = _num(r.get("step")), _num(r.get(key))
        if s is not None and v is not None and math.isfinite(v):
            by_step[s] = v
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(output_dir: str | os.PathLike, out_name: str = CURVES_FILE) -> Path:
    """Draw train loss, lr, eval top-1 (and EMA top-1) and images/s vs step into a PNG."""
    # The object API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    train = read_jsonl(output_dir / METRICS_FILE)
    evals = read_jsonl(output_dir / EVAL_FILE)

    fig = Figure(figsize=(12, 8), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()

    def panel(ax, title, lines, logy=False):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        drawn = False
        for steps, values, kw in lines:
            if steps:
                ax.plot(steps, values, **kw)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            return
        if logy and all(v > 0 for _, vals, _ in lines for v in vals):
            ax.set_yscale("log")
        if sum(1 for steps, _, _ in lines if steps) > 1:
            ax.legend()

    s, loss = _series(train, "loss")
    loss_lines = [(s, loss, {"lw": 0.8, "alpha": 0.5 if len(s) > 50 else 1.0, "label": "loss"})]
    if len(s) > 50:
        loss_lines.append((s, _smooth(loss, max(len(s) // 50, 5)), {"lw": 1.5, "label": "smoothed"}))
    panel(axes[0], "train loss", loss_lines)
    panel(axes[1], "learning rate", [(*_series(train, "lr"), {"lw": 1.2})])
    top1 = [(*_series(evals, "top1"), {"marker": "o", "ms": 3, "label": "top1"})]
    if any("ema_top1" in r for r in evals):
        top1.append((*_series(evals, "ema_top1"), {"marker": "s", "ms": 3, "label": "ema_top1"}))
    panel(axes[2], "eval top-1", top1)
    panel(axes[3], "images/s (global)", [(*_series(train, "images_per_sec"), {"lw": 1.0})])

    out = output_dir / out_name
    tmp = output_dir / (out_name + ".tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------------
# Memory, peak FLOP/s, MFU
# --------------------------------------------------------------------------------------------


def _as_device(device: Any) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def max_memory_mb(device: Any) -> float:
    """Peak memory in MiB: CUDA allocator peak on GPUs, peak RSS of this process otherwise."""
    dev = _as_device(device)
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux but bytes on macOS.
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


# Dense (no sparsity) tensor-core peaks in FLOP/s: (bf16/fp16, tf32). Matched in order against
# torch.cuda.get_device_name(), so the specific names come before the generic ones.
_GPU_PEAKS: list[tuple[str, float, float]] = [
    ("H100 PCIE", 756e12, 378e12),
    ("H100 NVL", 835e12, 418e12),
    ("GH200", 989e12, 494e12),
    ("H200", 989e12, 494e12),
    ("H100", 989e12, 494e12),
    ("H800", 989e12, 494e12),
    ("A100", 312e12, 156e12),
    ("A800", 312e12, 156e12),
    ("L40S", 362e12, 183e12),
    ("A10G", 125e12, 62.5e12),
    ("RTX 4090", 165e12, 82.6e12),
]

_MEASURED_PEAKS: dict[tuple[str, torch.dtype], float] = {}

_DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "no": torch.float32,  # accelerate's mixed_precision="no"
    "none": torch.float32,
}


def _as_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32
    try:
        return _DTYPE_NAMES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}") from None


def _tf32_enabled() -> bool:
    if torch.get_float32_matmul_precision() != "highest":
        return True
    prec = getattr(getattr(torch.backends.cuda, "matmul", None), "fp32_precision", None)
    return prec == "tf32"


def _table_peak(name: str, dtype: torch.dtype) -> float | None:
    up = name.upper()
    for key, half, tf32 in _GPU_PEAKS:
        if key in up:
            if dtype in (torch.bfloat16, torch.float16):
                return half
            if dtype == torch.float32 and _tf32_enabled():
                return tf32
            return None  # true fp32 (no TF32): not in the table, measure it
    return None


def measure_matmul_peak(device: Any, dtype: Any) -> float:
    """Achieved FLOP/s of a square matmul in ``dtype`` on ``device``: a practical peak, kept
    under ~1 s (the MFU denominator where no datasheet figure applies, and ``bench model``'s)."""
    dev, dtype = _as_device(device), _as_dtype(dtype)
    n = 8192 if dev.type == "cuda" else 1024
    # A private generator: measuring (once per process) must not move the training RNG.
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, generator=g).to(dtype)
    b = torch.randn(n, n, device=dev, generator=g).to(dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(k: int) -> float:
        sync()
        t = time.perf_counter()
        for _ in range(k):
            a @ b
        sync()
        return time.perf_counter() - t

    timed(1)  # warm-up: library initialisation, kernel selection, thread pool start
    one = timed(1)
    # Size the timed run from one matmul: ~0.25 s in all, so a slow dtype (bf16 on a CPU
    # without hardware support) costs one iteration instead of a long stall.
    k = max(1, min(100, int(0.25 / max(one, 1e-6))))
    elapsed = one if k == 1 else timed(k)
    return 2.0 * n**3 * k / elapsed


def datasheet_peak(device: Any, dtype: Any) -> float | None:
    """The dense datasheet peak FLOP/s of a known GPU in ``dtype``; None for CPUs and others."""
    dev = _as_device(device)
    if dev.type != "cuda":
        return None
    return _table_peak(torch.cuda.get_device_name(dev), _as_dtype(dtype))


def peak_flops(device: Any, dtype: Any) -> float:
    """Per-device peak FLOP/s for MFU in ``dtype`` (torch dtype or "bf16"/"fp16"/"fp32"/"no").

    Known GPUs use their dense tensor-core datasheet numbers (fp32 means TF32 when TF32 matmuls
    are enabled). CPUs, unknown GPUs and fp32 without TF32 are measured once with a timed
    matmul and cached per (device type, dtype); a measured peak is what a matmul achieves,
    so MFU against it reads higher than against a datasheet peak.
    """
    dev = _as_device(device)
    dt = _as_dtype(dtype)
    peak = datasheet_peak(dev, dt)
    if peak is not None:
        return peak
    key = (dev.type, dt)
    if key not in _MEASURED_PEAKS:
        _MEASURED_PEAKS[key] = measure_matmul_peak(dev, dt)
    return _MEASURED_PEAKS[key]


def mfu(flops_per_image: float, images_per_sec_global: float, world_size: int, peak: float) -> float:
    """Model FLOPs utilisation: training costs ~3x the forward FLOPs (forward + 2x backward).

    ``images_per_sec_global`` is the throughput of all ranks together and ``peak`` the
    per-device peak, hence the division by ``world_size``. ``flops_per_image`` is the
    architecture's count (timm's published GMACs x 2), also for a ViT whose last block computes
    only the pooled tokens, so MFU stays comparable across implementations. NaN when the inputs
    make no sense.
    """
    if peak <= 0 or world_size <= 0:
        return float("nan")
    return 3.0 * flops_per_image * images_per_sec_global / (world_size * peak)


# --------------------------------------------------------------------------------------------
# Step timing
# --------------------------------------------------------------------------------------------


class StepTimer:
    """Time spent waiting for data vs the whole step, with host clocks only.

    Call ``data_start()`` before fetching a batch, ``data_end()`` when it is in hand and
    ``step_end()`` after the optimizer step. No device synchronisation happens except in
    ``summary(sync_fn)``: CUDA work is asynchronous, so per-step host times drift from device
    times, but over a window the host is held back by the device and the totals agree; passing
    ``sync_fn=torch.cuda.synchronize`` closes the window on the device's clock. A window spans
    from the first ``data_start()`` after the previous summary to the last ``step_end()`` (or
    the sync), so evaluation or checkpointing between windows does not count as step time.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._window_start: float | None = None
        self._data_t: float | None = None
        self._last_end: float | None = None
        self._wait = 0.0
        self._steps = 0

    def data_start(self) -> None:
        self._data_t = time.perf_counter()
        if self._window_start is None:
            self._window_start = self._data_t

    def data_end(self) -> None:
        if self._data_t is not None:
            self._wait += time.perf_counter() - self._data_t
            self._data_t = None

    def step_end(self) -> None:
        self._last_end = time.perf_counter()
        if self._window_start is None:  # data_start never called: time from the first step end
            self._window_start = self._last_end
            return
        self._steps += 1

    def summary(self, sync_fn=None) -> dict:
        """``{step_time, data_wait_frac, steps}`` of the window since the last summary; resets."""
        if sync_fn is not None:
            sync_fn()
            end = time.perf_counter()
        else:
            end = self._last_end
        steps = self._steps
        total = (end - self._window_start) if (end is not None and self._window_start is not None) else 0.0
        out = {
            "step_time": total / steps if steps else 0.0,
            "data_wait_frac": min(self._wait / total, 1.0) if total > 0 else 0.0,
            "steps": steps,
        }
        self._reset()
        return out


class InputBoundAdvisor:
    """Says once, in one line, when training waits for data: ``update(data_wait_frac)`` per
    logging window returns the advice the first time ``windows`` windows in a row (not counting
    the first window of the process: compilation and loader start-up) spent at least
    ``threshold`` of their step time waiting for a batch, else None."""

    def __init__(self, workers: int, threshold: float = 0.2, windows: int = 3) -> None:
        self.workers, self.threshold, self.windows = workers, threshold, windows
        self._seen = 0
        self._run: list[float] = []
        self._said = False

    def update(self, data_wait_frac: float) -> str | None:
        self._seen += 1
        if self._said or self._seen == 1:
            return None
        self._run = self._run + [data_wait_frac] if data_wait_frac >= self.threshold else []
        if len(self._run) < self.windows:
            return None
        self._said = True
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return (
            f"input-bound: {100 * sum(self._run) / len(self._run):.0f}% of step time waited for data over "
            f"the last {len(self._run)} logging windows (data.workers={self.workers} per rank; this "
            f"process may use {cores} CPU cores, shared by {local} local rank(s)): raise data.workers, "
            "write pre-resized shards (python -m vit_dist.data.shards --resize 320), or check how fast "
            "the shard storage reads"
        )
