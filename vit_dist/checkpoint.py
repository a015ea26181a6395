"""Checkpoints: atomic, complete, resumable, on one process or many.

Layout of ``output_dir/checkpoints/step-00001234/``:

    state.pt        DDP / single process: model, optimizer, EMA (rank 0 writes it)
    dcp/            FSDP: the same, sharded with torch.distributed.checkpoint (every rank writes)
    rank-00000.pt   per rank: RNG states (python, numpy, torch, cuda), data-loader position
    meta.json       step, epoch, samples seen, scheduler and lr schedule, loss scaler, world
                    size, strategy, rank 0's data position (what a resume on another world
                    size re-plans the epoch from), model name, config -- written last: a
                    directory without it is incomplete

Atomicity: everything is written into ``step-N.tmp/``; after a barrier rank 0 writes
meta.json, then renames the directory to ``step-N`` (one rename on one filesystem). A process
killed at any moment leaves the previous checkpoint complete and loadable; stale ``.tmp``
directories are ignored and removed at the next save. The last ``keep`` checkpoints are kept,
and the best (by eval top-1) is kept as ``best/`` (a copy) as well.

Loading never executes code: ``torch.load(weights_only=True)`` and DCP.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from . import atomic
from .distributed import DistEnv, barrier, broadcast_object
from .errors import CheckpointError
from .testing import faults

CKPT_DIR = "checkpoints"
_PREFIX = "step-"


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CKPT_DIR


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (those with meta.json), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name.startswith(_PREFIX)
        and not p.name.endswith(".tmp")
        and (p / "meta.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A checkpoint directory (has meta.json), or the latest complete one of a run directory
    or of its ``checkpoints/`` directory. Raises CheckpointError otherwise."""
    p = Path(path)
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


def rng_state() -> dict:
    """All RNG states as tensors and plain Python values, so that weights_only loading works."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuplify(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuplify(x):
    """weights_only loading turns tuples into lists; RNG setters want tuples back."""
    if isinstance(x, list):
        return tuple(_tuplify(v) for v in x)
    return x


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _model_optim_state(model: nn.Module, optimizer, fsdp: bool):
    if fsdp:
        return get_state_dict(model, optimizer)
    return model.state_dict(), optimizer.state_dict()


def save_checkpoint(
    output_dir: str | os.PathLike,
    env: DistEnv,
    *,
    step: int,
    model: nn.Module,
    optimizer,
    fsdp: bool,
    ema: dict[str, torch.Tensor] | None,
    meta: dict,
    rank_state: dict,
    keep: int,
    best: bool = False,
) -> Path:
    """Collective: every rank calls it. ``model`` is the unwrapped (or FSDP) module."""
    root = checkpoint_root(output_dir)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f"{_PREFIX}{step:08d}.tmp"
    if env.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()

    model_sd, optim_sd = _model_optim_state(model, optimizer, fsdp)
    if fsdp:
        state = {"model": model_sd, "optim": optim_sd}
        if ema is not None:
            state["ema"] = ema
        dcp.save(state, checkpoint_id=str(tmp / "dcp"))
    elif env.is_main:
        state = {"model": model_sd, "optim": optim_sd}
        if ema is not None:
            state["ema"] = ema
        _atomic_torch_save(state, tmp / "state.pt")
    _atomic_torch_save({**rank_state, "rng": rng_state()}, tmp / f"rank-{env.rank:05d}.pt")
    faults.maybe_kill("kill_in_save", step, env.rank)
    barrier()  # every rank's files are in place

    if env.is_main:
        atomic.write_json(
            tmp / "meta.json", {**meta, "step": step, "world_size": env.world_size, "fsdp": fsdp}, default=str
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if best:
            best_dir = root / "best"
            best_tmp = root / "best.tmp"
            if best_tmp.exists():
                shutil.rmtree(best_tmp)
            shutil.copytree(final, best_tmp)
            if best_dir.exists():
                shutil.rmtree(best_dir)
            os.replace(best_tmp, best_dir)
        _prune(root, keep)
    barrier()
    return final


def _prune(root: Path, keep: int) -> None:
    for p in list_checkpoints(root.parent)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f"{_PREFIX}*.tmp"):  # left by a killed save
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


def read_meta(ckpt: str | os.PathLike) -> dict:
    path = Path(ckpt) / "meta.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt} is not a complete vit_dist checkpoint (no meta.json)")
    return json.loads(path.read_text())


def load_checkpoint(
    ckpt: str | os.PathLike,
    env: DistEnv,
    *,
    model: nn.Module,
    optimizer,
    fsdp: bool,
    ema: dict[str, torch.Tensor] | None,
) -> tuple[dict, dict | None]:
    """Load model/optimizer/EMA in place; return (meta, this rank's state or None when the
    world size changed)."""
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    if meta.get("fsdp") != fsdp:
        raise CheckpointError(
            f"{ckpt} was written with parallel.strategy={'fsdp' if meta.get('fsdp') else 'ddp'}; "
            f"resume with the same strategy or export weights and start a new run"
        )
    if fsdp:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        if ema is not None:
            state["ema"] = ema
        dcp.load(state, checkpoint_id=str(ckpt / "dcp"))  # reshards to this world size
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt} does not fit this model: {str(e).splitlines()[1:3]}") from None
        optimizer.load_state_dict(state["optim"])
        if ema is not None:
            if "ema" not in state:
                raise CheckpointError(f"{ckpt} has no EMA weights but ema.decay > 0")
            for k, v in ema.items():
                v.copy_(state["ema"][k])
    rank_file = ckpt / f"rank-{env.rank:05d}.pt"
    rank_state = None
    if meta.get("world_size") == env.world_size and rank_file.is_file():
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
    return meta, rank_state


def resolve_resume(resume: str | None, output_dir: str | os.PathLike, env: DistEnv) -> Path | None:
    """'auto' -> latest complete checkpoint in output_dir (or None); a path -> that checkpoint.
    Rank 0 decides and broadcasts, so all ranks load the same one."""
    if not resume:
        return None
    choice = None
    if env.is_main:
        if resume == "auto":
            choice = latest_checkpoint(output_dir)
        else:
            p = Path(resume)
            if p.is_dir() and p.name == CKPT_DIR:
                p = latest_checkpoint(p.parent) or p
            if not (p / "meta.json").is_file():
                choice = f"ERROR:resume={resume}: not a complete checkpoint directory (no meta.json)"
            else:
                choice = p
        choice = str(choice) if choice else None
    choice = broadcast_object(choice)
    if choice and choice.startswith("ERROR:"):
        raise CheckpointError(choice[len("ERROR:") :])
    return Path(choice) if choice else None
