"""Checkpoints: atomic, complete, verifiable, resumable, on one process or many.

Layout of ``output_dir/checkpoints/step-00001234/``:

    state.pt        DDP / single process: model, optimizer, EMA (rank 0 writes it)
    dcp/            FSDP: the same, sharded with torch.distributed.checkpoint (every rank writes
                    its ``__<rank>_<n>.distcp`` files, rank 0 the ``.metadata``)
    rank-00000.pt   per rank: the states of that rank's components (data-loader position and
                    counts, RNG states: ``state.py``)
    meta.json       what the trainer describes the run by (model name and keywords, number
                    of classes, config, the run lineage ``run_id``), the states of the run's
                    components under ``state`` (counters, lr schedule, loss scaler, EMA count,
                    and the job's data position and counts that a resume on another world size
                    re-plans from), step, world size, strategy (``fsdp``), the manifest of every
                    other file (``files``) and a checksum of meta.json itself (``meta_crc32``)
                    -- written last: a directory without it is incomplete

Atomicity: everything is written into ``step-N.tmp/``; every file is fsynced by the rank that
wrote it, then rank 0 writes meta.json, fsyncs every directory of the checkpoint and renames it
to ``step-N`` (one rename on one filesystem), then fsyncs ``checkpoints/``. A process killed or
powered off at any moment leaves the previous checkpoint complete and loadable; stale ``.tmp``
directories are ignored and removed at the next save. Saving a step that exists already (or
``best/``) renames the old copy aside to ``step-N.old`` first, renames the new one in, then
deletes the old: at every moment one complete copy is findable (``list_checkpoints`` reads
``step-N.old`` while ``step-N`` is missing). A save that fails on an OS error (disk full,
read-only filesystem, permissions) raises one CheckpointError on every rank naming the path and
the reason; the partial ``.tmp`` is removed and the previous checkpoint stays as it was.

Lineage: the last ``keep`` checkpoints of the run that writes (``meta["run_id"]``) are kept;
checkpoints of other runs, or without a ``run_id``, are never pruned, nor is the one just
written. The best (by eval top-1) is kept as ``best/`` (a copy), replaced only by its own run.

Verification (:func:`verify_checkpoint`) compares every file with the manifest in meta.json
(``vit_dist.checkpoint.manifest`` says what it records and why the default check stays cheap for
multi-GB checkpoints). ``resume=auto`` skips damaged checkpoints (one warning naming them) for
the newest intact one; a checkpoint named by path must be intact.

Loading never executes code: ``torch.load(weights_only=True)`` and DCP; a file it refuses (a
pickle with code) or cannot read is a CheckpointError, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, cast

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..core import atomic
from ..core.errors import CheckpointError
from ..core.files import Fields, load_json_object
from ..runtime.distributed import DistEnv, all_gather_object, broadcast_object
from ..testing import faults
from .manifest import check_file, expected_files, file_record, meta_crc, os_reason
from .state import Stateful, state_dicts

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
BEST = "best"
_PREFIX = "step-"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_ASIDE = ".old"  # the previous copy of a directory being replaced, between the two renames
_ASIDE_DIR = re.compile(r"^step-(\d+)\.old$")
_DCP_RANK_FILE = re.compile(r"^__(\d+)_")  # DCP names each rank's files __<rank>_<n>.distcp


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CKPT_DIR


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (``step-<number>`` directories with meta.json), oldest first.

    A ``step-N.old`` (the old copy of a step being saved again) stands in for ``step-N`` while
    that is missing: a save killed between its two renames loses neither. Anything else
    (``.tmp`` saves in progress or torn, a ``step-final/`` a user made) is not a checkpoint."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    current: dict[int, Path] = {}
    aside: dict[int, Path] = {}
    for p in root.iterdir():
        for pattern, found in ((_STEP_DIR, current), (_ASIDE_DIR, aside)):
            match = pattern.match(p.name)
            if match and (p / "meta.json").is_file():
                found[int(match[1])] = p
    by_step = {**aside, **current}
    return [by_step[step] for step in sorted(by_step)]


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint that ``list_checkpoints`` returns (``step-N`` or ``step-N.old``)."""
    match = _STEP_DIR.match(path.name) or _ASIDE_DIR.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not named like a checkpoint")
    return int(match[1])


RUN_MARKER = "run.json"
_WALK_LIMIT = 20_000  # directories looked at below a directory for a run nested in it


def holds_a_run(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is a run's directory: it has run.json, or checkpoints with meta."""
    d = Path(directory)
    try:
        return (d / RUN_MARKER).is_file() or bool(list_checkpoints(d))
    except OSError:  # unreadable: not ours to judge, and nothing we may write into either
        return False


def run_below(top: str | os.PathLike) -> Path | None:
    """A run directory strictly below ``top`` (the first found), or None. Symlinks are not
    followed, and the walk stops after ``_WALK_LIMIT`` directories (a run directory holds a few
    dozen; a tree that large is no run's, and is not searched through)."""
    seen, start = 0, os.fspath(top)
    for root, dirs, _ in os.walk(start, followlinks=False):
        if root != start and holds_a_run(root):
            return Path(root)
        seen += len(dirs)
        if seen > _WALK_LIMIT:
            return None
        dirs.sort()
    return None


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A checkpoint directory (has meta.json), or the latest complete one of a run directory
    or of its ``checkpoints/`` directory. Raises CheckpointError otherwise."""
    p = Path(path)
    aside = p.with_name(p.name + _ASIDE)
    if not p.exists() and (aside / "meta.json").is_file():
        return aside  # best/ (or a step) killed between the two renames of its replacement
    if not p.exists():
        raise CheckpointError(f"checkpoint={path}: no such file or directory")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint={path} is a file: expected a checkpoint or run directory")
    if (p / "meta.json").is_file():
        return p
    latest = latest_checkpoint(p) or (latest_checkpoint(p.parent) if p.name == CKPT_DIR else None)
    if latest is None:
        raise CheckpointError(
            f"checkpoint={path}: no complete checkpoint there (expected a directory with meta.json, "
            f"or a run directory with checkpoints/step-N)"
        )
    return latest


class _WriteRecorder:
    """A file for ``torch.save`` that remembers the OSError of a failed write. torch's zip
    writer calls ``write`` from C++ and turns the exception into ``RuntimeError: [enforce fail
    at inline_container.cc] unexpected pos`` (a full disk, reported as a bug, without the
    reason); the recorded error is the one to raise."""

    def __init__(self, fh) -> None:
        self.fh, self.error = fh, cast("OSError | None", None)

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.fh.flush()


def _write_torch(obj, path: Path) -> None:
    """``torch.save`` through a Python file, so that a failed write raises the OSError it is
    (disk full, read-only, permissions, file size limit). Durability is
    :func:`manifest.file_record`'s job."""
    with open(path, "wb") as fh:
        sink = _WriteRecorder(fh)
        try:
            torch.save(obj, cast(IO[bytes], sink))  # torch calls write (and flush) only
            fh.flush()
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def checkpoint_problem(ckpt: str | os.PathLike, *, full: bool = False) -> str | None:
    """What makes ``ckpt`` unusable (one line), or None when it is intact. See the module
    docstring for what the default check reads and what ``full=True`` adds."""
    ckpt = Path(ckpt)
    try:
        meta = read_meta(ckpt)
    except CheckpointError as e:
        return str(e)
    if meta.get("meta_crc32") != meta_crc(meta):
        return "meta.json does not match its checksum (edited or damaged)"
    files = meta.get("files")
    if not isinstance(files, dict):
        return "meta.json has no manifest of its files (not written by this version of vit_dist)"
    unlisted = [name for name in expected_files(meta) if name not in files]
    if unlisted:
        return f"its manifest does not list {unlisted[0]}"
    for name in sorted(files):
        problem = check_file(ckpt, name, files[name], full=full)
        if problem:
            return problem
    return None


def verify_checkpoint(ckpt: str | os.PathLike, *, full: bool = False) -> dict:
    """Raise CheckpointError naming the damage unless every file of ``ckpt`` matches its
    manifest; returns its meta."""
    problem = checkpoint_problem(ckpt, full=full)
    if problem:
        raise CheckpointError(f"{ckpt} is damaged: {problem}")
    return read_meta(ckpt)


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` on CPU: never runs code. A missing file, a pickle that
    would run code and a file torch cannot read are each a CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except Exception as e:
        raise CheckpointError(
            f"{path} cannot be loaded ({_one_line(e)}); loading never runs code from a checkpoint, "
            f"so a file that would is refused"
        ) from None


def load_dcp(state: dict, directory: str | os.PathLike, **kwargs) -> None:
    """``dcp.load`` into ``state`` in place, its failures (DCP raises them as BaseException) a
    CheckpointError."""
    try:
        dcp.load(state, checkpoint_id=str(directory), **kwargs)
    except (Exception, CheckpointException) as e:
        raise CheckpointError(f"{directory} cannot be loaded ({_dcp_cause(e)})") from None


def _dcp_cause(e: BaseException) -> str:
    """The first underlying failure of a DCP error (it wraps one exception per failed rank)."""
    if isinstance(e, CheckpointException) and e.failures:
        rank, (cause, _) = min(e.failures.items())
        return f"rank {rank}: {_one_line(cause)}"
    return _one_line(e)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError):
        return os_reason(e)
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:300]}" if first else type(e).__name__


@dataclasses.dataclass(frozen=True)
class TensorState:
    """What a checkpoint holds as tensors: ``state.pt`` (rank 0), or under FSDP ``dcp/``,
    sharded by every rank and resharded to the world size that loads it."""

    model: nn.Module  # the unwrapped (or FSDP) module
    optimizer: torch.optim.Optimizer
    ema: dict[str, torch.Tensor] | None  # the EMA weights (``ModelEma.params``), None without EMA
    fsdp: bool

    def model_optim(self):
        """(model state dict, optimizer state dict): under FSDP of sharded DTensors."""
        if self.fsdp:
            return get_state_dict(self.model, self.optimizer)
        return self.model.state_dict(), self.optimizer.state_dict()


def save_checkpoint(
    output_dir: str | os.PathLike,
    env: DistEnv,
    *,
    step: int,
    tensors: TensorState,
    meta: dict,
    state: Mapping[str, Stateful],
    rank_state: Mapping[str, Stateful],
    keep: int,
    best: bool = False,
) -> Path:
    """Collective: every rank calls it. ``meta``: what describes the run (JSON), including
    ``run_id``, the run lineage that pruning and ``best/`` go by; ``state``: the run's
    components, which every rank takes the state of (one may be a collective) and rank 0 writes
    into meta.json; ``rank_state``: this rank's components (its rank file). When any rank cannot
    write (disk full, read-only, permissions) every rank raises the same CheckpointError."""
    states = state_dicts(state)
    root = checkpoint_root(output_dir)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f"{final.name}.tmp"
    _stop_if_failed(env, _attempt(_fresh_dir, tmp) if env.is_main else None, tmp, output_dir)

    records, failure = {}, None
    try:
        _write_state(tmp, env, tensors)
        # After the tensors: the RNG states as the run goes on from here.
        _write_torch(state_dicts(rank_state), tmp / f"rank-{env.rank:05d}.pt")
        records = _own_files(tmp, env, fsdp=tensors.fsdp)
    except (OSError, CheckpointException) as e:
        failure = f"rank {env.rank}: {_dcp_cause(e)}" if env.distributed else _dcp_cause(e)
    faults.maybe_kill("kill_in_save", step, env.rank)
    gathered = all_gather_object((records, failure))  # also: every rank's files are in place
    failure = next((f for _, f in gathered if f), None)
    _stop_if_failed(env, failure, tmp, output_dir)

    if env.is_main:
        manifest = {name: record for files, _ in gathered for name, record in files.items()}
        full_meta = {
            **meta,
            "state": states,
            "step": step,
            "world_size": env.world_size,
            "fsdp": tensors.fsdp,
            "files": manifest,
        }
        failure = _attempt(_publish_checkpoint, tmp, final, full_meta)
    _stop_if_failed(env, failure, tmp, output_dir)

    failure = None
    if env.is_main:  # the checkpoint is saved: what fails from here leaves it in place
        run_id = meta.get("run_id")
        failure = _attempt(_update_best, root, final, run_id) if best else None
        _prune(root, keep, run_id=run_id, written=final)
    failure = broadcast_object(failure)
    if failure:
        raise CheckpointError(f"{final} was saved, but {root / BEST} could not be updated: {failure}")
    return final


def _attempt(action, *args) -> str | None:
    """Run ``action(*args)``; the OS reason (one line) when it fails with an OSError, else None."""
    try:
        action(*args)
    except OSError as e:
        return os_reason(e)
    return None


def _fresh_dir(path: Path) -> None:
    if path.exists():  # left by a save that was killed
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _stop_if_failed(env: DistEnv, failure: str | None, tmp: Path, output_dir: str | os.PathLike) -> None:
    """Collective. When rank 0 knows of a failure (``failure``), remove the partial save (when
    the filesystem still allows it) and raise the same CheckpointError on every rank."""
    message = None
    if env.is_main and failure:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(output_dir)
        kept = (
            f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        )
        message = (
            f"could not write checkpoint {tmp}: {failure}; {kept} (free space or fix the directory, then "
            f"resume with resume=auto)"
        )
    message = broadcast_object(message)
    if message:
        raise CheckpointError(message)


def _write_state(tmp: Path, env: DistEnv, tensors: TensorState) -> None:
    """Model, optimizer and EMA: dcp/ from every rank (FSDP), or state.pt from rank 0."""
    model_sd, optim_sd = tensors.model_optim()
    state = {"model": model_sd, "optim": optim_sd}
    if tensors.ema is not None:
        state["ema"] = tensors.ema
    if tensors.fsdp:
        dcp.save(state, checkpoint_id=str(tmp / "dcp"))
    elif env.is_main:
        _write_torch(state, tmp / "state.pt")


def _own_files(tmp: Path, env: DistEnv, *, fsdp: bool) -> dict[str, dict]:
    """fsync and describe the files this rank wrote (each rank reads back its own, from its
    page cache, in parallel): its rank file, rank 0's state.pt, and of dcp/ the files DCP
    names after this rank; rank 0 takes the others (DCP's .metadata)."""
    names = [f"rank-{env.rank:05d}.pt"]
    if fsdp:
        for f in sorted(p for p in (tmp / "dcp").iterdir() if p.is_file()):
            owner = _DCP_RANK_FILE.match(f.name)
            if (int(owner[1]) == env.rank) if owner else env.is_main:
                names.append(f"dcp/{f.name}")
    elif env.is_main:
        names.append("state.pt")
    return {name: file_record(tmp / name) for name in names}


def _publish_checkpoint(tmp: Path, final: Path, meta: dict) -> None:
    """meta.json (with its own checksum) last, every file and directory durable, then the rename."""
    meta = json.loads(json.dumps(meta, default=str))  # as it reads back, for the checksum
    meta["meta_crc32"] = meta_crc(meta)
    atomic.write_json(tmp / "meta.json", meta)
    _fsync_tree(tmp, files=False)  # each file was fsynced by the rank that wrote it
    _publish(tmp, final)


def _fsync_tree(top: Path, *, files: bool) -> None:
    """fsync every directory under ``top`` (their entries) and, with ``files``, every file."""
    for dirpath, _, filenames in os.walk(top, topdown=False):
        for name in filenames if files else ():
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        atomic.fsync_dir(dirpath)


def _publish(staging: Path, final: Path) -> None:
    """Rename the complete ``staging`` directory to ``final``. An existing ``final`` is renamed
    aside to ``<final>.old`` first and deleted only once the new one is in place, so that a kill
    at any moment leaves one complete copy findable (``list_checkpoints`` and
    ``resolve_checkpoint_dir`` read the ``.old`` while ``final`` is missing)."""
    aside = final.with_name(final.name + _ASIDE)
    if final.exists():
        if aside.exists():  # left by a kill after the last publish's second rename
            shutil.rmtree(aside)
        os.replace(final, aside)
    try:
        os.replace(staging, final)
    except OSError:
        if aside.exists() and not final.exists():
            os.replace(aside, final)  # put the old one back where it was
        raise
    atomic.fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _run_id_of(ckpt: Path) -> Any:
    """The run lineage a checkpoint records (None when it records none or cannot be read)."""
    try:
        return read_meta(ckpt).get("run_id")
    except CheckpointError:
        return None


def _update_best(root: Path, final: Path, run_id: Any) -> None:
    """Copy ``final`` to best/, unless best/ holds a checkpoint of another run (or of no known
    run): that one is the other run's, and stays."""
    best = root / BEST
    held = next((d for d in (best, root / f"{BEST}{_ASIDE}") if (d / "meta.json").is_file()), None)
    if held is not None and (run_id is None or _run_id_of(held) != run_id):
        log.warning(
            "%s holds a checkpoint of another run (run_id %s): left as it is, not replaced by %s",
            held,
            _run_id_of(held),
            final,
        )
        return
    staging = root / f"{BEST}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(final, staging)
        _fsync_tree(staging, files=True)
        _publish(staging, best)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prune(root: Path, keep: int, *, run_id: Any, written: Path) -> None:
    """Remove this run's checkpoints but its newest ``keep`` and the one just written (never
    another run's, nor one that records no run), saves that were killed (``.tmp``), and old
    copies (``.old``) whose replacement is complete."""
    if run_id is not None:
        ours = [p for p in list_checkpoints(root.parent) if _run_id_of(p) == run_id]
        for p in ours[:-keep] if keep > 0 else []:
            if p == written:
                continue
            inner = run_below(p)
            if inner is not None:  # another run made its home in there: never delete it
                log.warning("not pruning %s: it holds another run's directory, %s", p, inner)
                continue
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f"{_PREFIX}*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f"{_PREFIX}*{_ASIDE}"):
        if (p.with_name(p.name[: -len(_ASIDE)]) / "meta.json").is_file():
            shutil.rmtree(p, ignore_errors=True)


def check_compatible(
    path: Path, meta: dict, *, model_name: str, num_classes: int, model_kwargs: dict
) -> None:
    """Refuse (CheckpointError naming the difference) to resume a checkpoint of another model:
    another name, number of classes or any model keyword."""
    for key, expected in (("model_name", model_name), ("num_classes", num_classes)):
        if meta.get(key) != expected:
            raise CheckpointError(
                f"{path} was written for {key}={meta.get(key)!r}, this run has {expected!r}"
            )
    # Through JSON on both sides: tuples and lists compare equal, as they load.
    saved = json.loads(json.dumps(meta.get("model_kwargs", {})))
    configured = json.loads(json.dumps(model_kwargs))
    differing = sorted(k for k in set(saved) | set(configured) if saved.get(k) != configured.get(k))
    if differing:
        detail = ", ".join(
            f"model.{k}: checkpoint {saved.get(k)!r}, this run {configured.get(k)!r}" for k in differing
        )
        raise CheckpointError(f"{path} is from another model ({detail})")


META_LIMIT = 64 * 1024 * 1024  # bytes of a meta.json: its manifest lists every rank's files


def read_meta(ckpt: str | os.PathLike) -> dict:
    """A checkpoint's meta.json, bounded and parsed by ``core.files`` and checked for the fields
    the loaders read (types and ranges): any damage is a CheckpointError naming the file and the
    field, so ``resume=auto`` takes it for a damaged checkpoint and falls back."""
    path = Path(ckpt) / "meta.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt} is not a complete vit_dist checkpoint (no meta.json)")
    meta = load_json_object(path, limit=META_LIMIT, error=CheckpointError, what="checkpoint meta.json")
    f = Fields(meta, source=str(path), error=CheckpointError)
    f.integer("step", minimum=0)
    f.integer("world_size", minimum=1)
    f.flag("fsdp")
    f.text("model_name", required=False)
    f.integer("num_classes", minimum=1, maximum=10_000_000, required=False)
    f.section("model_kwargs", required=False)
    f.section("config", required=False)
    f.section("state", required=False)
    f.texts("classes", required=False)
    return meta


def load_checkpoint(ckpt: str | os.PathLike, env: DistEnv, tensors: TensorState) -> tuple[dict, dict | None]:
    """Load the tensors (model, optimizer, EMA) in place; return (meta, the states of this
    rank's components, or None when the world size changed: then they mean nothing here)."""
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    if meta.get("fsdp") != tensors.fsdp:
        raise CheckpointError(
            f"{ckpt} was written with parallel.strategy={'fsdp' if meta.get('fsdp') else 'ddp'}; "
            f"resume with the same strategy or export weights and start a new run"
        )
    if tensors.fsdp:
        _load_sharded(ckpt, tensors)
    else:
        _load_whole(ckpt, tensors)
    rank_file = ckpt / f"rank-{env.rank:05d}.pt"
    rank_state = None
    if meta.get("world_size") == env.world_size and rank_file.is_file():
        rank_state = load_torch_file(rank_file)
    return meta, rank_state


def _load_sharded(ckpt: Path, tensors: TensorState) -> None:
    """dcp/ into this rank's shards, resharded to this world size."""
    model_sd, optim_sd = tensors.model_optim()
    state = {"model": model_sd, "optim": optim_sd}
    if tensors.ema is not None:
        state["ema"] = tensors.ema  # loaded in place: the EMA's own DTensors
    load_dcp(state, ckpt / "dcp")
    set_state_dict(
        tensors.model, tensors.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )


def _load_whole(ckpt: Path, tensors: TensorState) -> None:
    """state.pt, on every rank."""
    state = load_torch_file(ckpt / "state.pt")
    try:
        tensors.model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt} does not fit this model: {str(e).splitlines()[1:3]}") from None
    tensors.optimizer.load_state_dict(state["optim"])
    if tensors.ema is not None:
        if "ema" not in state:
            raise CheckpointError(f"{ckpt} has no EMA weights but ema.decay > 0")
        for k, v in tensors.ema.items():
            v.copy_(state["ema"][k])


def resolve_resume(
    resume: str | None, output_dir: str | os.PathLike, env: DistEnv, *, full: bool = False
) -> Path | None:
    """'auto' -> the newest intact checkpoint in output_dir, None when there is none (damaged
    newer ones are skipped, with one warning naming them); a path -> that checkpoint, which must
    be intact. Rank 0 decides (verifying: :func:`verify_checkpoint`, ``full`` as there) and
    broadcasts, so all ranks load the same one; a CheckpointError is raised on every rank."""
    if not resume:
        return None
    choice = None
    if env.is_main:
        try:
            found = (
                _newest_intact(output_dir, full=full) if resume == "auto" else _resume_path(resume, full=full)
            )
            choice = str(found) if found else None
        except CheckpointError as e:
            choice = f"ERROR:{e}"
    choice = broadcast_object(choice)
    if choice and choice.startswith("ERROR:"):
        raise CheckpointError(choice[len("ERROR:") :])
    return Path(choice) if choice else None


def _newest_intact(output_dir: str | os.PathLike, *, full: bool) -> Path | None:
    """The newest checkpoint that verifies; CheckpointError when there are some but none does
    (starting afresh would silently throw the run away: that is the user's call)."""
    damaged: list[str] = []
    for ckpt in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(ckpt, full=full)
        if problem is None:
            if damaged:
                log.warning(
                    "resume=auto: %s; resuming from %s, the newest intact checkpoint",
                    "; ".join(damaged),
                    ckpt,
                )
            return ckpt
        damaged.append(f"{ckpt} is damaged ({problem})")
    if damaged:
        raise CheckpointError(
            f"resume=auto: no intact checkpoint in {checkpoint_root(output_dir)} ({len(damaged)} damaged, the "
            f"newest: {damaged[0]}); resume=PATH one you trust, or move them away to start afresh"
        )
    return None


def _resume_path(resume: str, *, full: bool) -> Path:
    p = Path(resume)
    if p.is_dir() and p.name == CKPT_DIR:
        p = latest_checkpoint(p.parent) or p
    if not (p / "meta.json").is_file():
        raise CheckpointError(f"resume={resume}: not a complete checkpoint directory (no meta.json)")
    problem = checkpoint_problem(p, full=full)
    if problem:
        raise CheckpointError(f"resume={resume}: {p} is damaged: {problem}")
    return p
