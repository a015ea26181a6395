"""Weights in and out of vit_dist's files: what evaluation, export, prediction and distillation
load, and the consolidated weights file that export writes.

- :func:`load_weights`: a training checkpoint (DDP ``state.pt`` or FSDP ``dcp/``, read in one
  process without collectives; verified against its manifest first, see
  ``checkpoint.verify_checkpoint``), its EMA, or any weights file ``models.load_pretrained``
  reads, into a plain model. A missing path or a damaged checkpoint is a CheckpointError.
- :func:`load_model`: any weights that say which model they are for (the three below).
- :func:`load_checkpoint_model`: rebuild a training checkpoint's model exactly as training
  built it (the resolved config in its ``meta.json``), with its weights.
- :func:`load_export`: an exported ``.safetensors`` file and its sidecar ``.json``.
- :func:`load_hub_model`: ``hf-hub:ORG/NAME[@REVISION]`` with nothing else: the model from
  its ``config.json`` (``architecture`` -> our registry name, ``num_classes``, ``model_args``),
  preprocessing and class names from it too (:func:`hub_model_spec`), the weights strictly.
- :func:`write_weights` / :func:`export_checkpoint`: the export itself, a weights-only
  ``.safetensors`` with timm parameter names plus a sidecar JSON (model name and keywords,
  classes, preprocessing, step, source), each written atomically.
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..core import atomic
from ..core.config import config_from_dict
from ..core.errors import CheckpointError, ConfigError
from ..core.files import Fields, load_json_object
from ..core.hub import HubModelConfig, is_hub_ref, parse_ref, read_config
from ..models import build_model, check_model_kwargs, create_model, list_models, load_pretrained
from ..models.pretrained import clean_param_name, fit_state_dict
from ..models.timm_models import PREFIX as TIMM_PREFIX
from ..models.timm_models import list_timm_models, timm_installed
from .manifest import os_reason
from .store import (
    CKPT_DIR,
    load_dcp,
    load_torch_file,
    read_meta,
    resolve_checkpoint_dir,
    verify_checkpoint,
)

EXPORT_FORMAT = "vit_dist.export/1"


def load_weights(model: nn.Module, path: str | os.PathLike, *, use_ema: bool = False) -> str:
    """Load a training checkpoint (or a run directory: its latest) or a weights file into a
    plain model; returns a one-line description of what was loaded. ``hf-hub:`` references
    load as the weights file they resolve to."""
    if is_hub_ref(path):
        parse_ref(str(path), "checkpoint")  # a malformed reference names the option
        return str(load_pretrained(model, str(path)))
    p = Path(path)
    if not p.exists():
        # Here, unlike model.pretrained (models.load_pretrained's FileNotFoundError), the path
        # names a checkpoint: a missing one is a checkpoint error.
        raise CheckpointError(f"checkpoint={path}: no such file or directory")
    if not p.is_dir():
        return str(load_pretrained(model, p))
    p = resolve_checkpoint_dir(p)
    meta = verify_checkpoint(p)
    key = "ema" if use_ema else "model"
    if meta.get("fsdp"):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        state = {key: {n: sd[n] for n, _ in model.named_parameters()} if use_ema else sd}
        # Every process reads the full tensors on its own (no_dist): no collectives, so this
        # also works on one rank of a running job (the trainer's final export).
        with warnings.catch_warnings():
            # DCP notes that it loads without a process group: that is the point here.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            load_dcp(state, p / "dcp", no_dist=True)
        sd.update(state[key])
    else:
        state = load_torch_file(p / "state.pt")
        if not isinstance(state, dict) or key not in state:
            raise CheckpointError(f"{p} has no {key} weights")
        sd = {**model.state_dict(), **state[key]} if use_ema else state[key]
    sd, _ = fit_state_dict(model, sd, str(p))
    model.load_state_dict(sd)
    return f"{'EMA of ' if use_ema else ''}training checkpoint {p} (step {meta['step']})"


def run_dir_of(checkpoint_dir: Path) -> Path:
    """``runs/x/checkpoints/step-N`` -> ``runs/x``."""
    parent = checkpoint_dir.parent
    return parent.parent if parent.name == CKPT_DIR else parent


def _saved_classes(meta: dict, num_classes: int) -> list[str] | None:
    """The class names a checkpoint's meta.json records (None: a data set without names)."""
    classes = meta.get("classes")
    return list(classes) if isinstance(classes, list) and len(classes) == num_classes else None


def checkpoint_classes(path: str | os.PathLike) -> tuple[int, list[str] | None] | None:
    """``(num_classes, class names or None)`` that the weights at ``path`` were trained for: a
    training checkpoint (or run directory) or an export with its sidecar; None for any other
    weights (a timm file, a hub reference), which record no classes."""
    if is_hub_ref(path):
        return None
    p = Path(path)
    if p.is_file():
        info = read_sidecar(p)
        if info is None or "num_classes" not in info:
            return None
        return int(info["num_classes"]), info.get("classes")
    meta = read_meta(resolve_checkpoint_dir(p))
    if "num_classes" not in meta:
        return None
    return int(meta["num_classes"]), _saved_classes(meta, int(meta["num_classes"]))


def _jsonable(obj: Any) -> Any:
    """Model keywords as JSON (tuples become lists, which the model constructors accept)."""
    return json.loads(json.dumps(obj))


def load_checkpoint_model(path: str | os.PathLike, *, ema: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild the model of a training checkpoint and load its weights (or EMA weights).

    Returns ``(model in eval mode, info)``; ``info`` is the export sidecar's content."""
    checkpoint_dir = resolve_checkpoint_dir(path)
    meta = read_meta(checkpoint_dir)
    if "config" not in meta or "num_classes" not in meta:
        raise CheckpointError(
            f"{checkpoint_dir}/meta.json has no config/num_classes: not a vit_dist checkpoint"
        )
    try:
        cfg = config_from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{checkpoint_dir}/meta.json: its config does not load ({e})") from None
    if ema and cfg.ema.decay == 0:
        raise CheckpointError(f"{checkpoint_dir} has no EMA weights (trained with ema.decay=0)")
    num_classes = int(meta["num_classes"])
    # Every weight comes from the checkpoint: don't read model.pretrained (it may be gone).
    cfg.model.pretrained = None
    model = build_model(cfg.model, cfg.data, num_classes)
    load_weights(model, checkpoint_dir, use_ema=ema)
    model.eval()
    info = {
        "format": EXPORT_FORMAT,
        "model_name": cfg.model.name,
        "model_kwargs": _jsonable(model.model_kwargs),
        "num_classes": num_classes,
        # Saved with the weights at training time; never looked up from a path (a relative
        # data.train would be resolved from wherever this command runs).
        "classes": _saved_classes(meta, num_classes),
        "img_size": cfg.data.img_size,
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "crop_pct": cfg.data.crop_pct,
        "interpolation": cfg.data.interpolation,
        "step": int(meta["step"]),
        "ema": ema,
        "source": str(checkpoint_dir.resolve()),
    }
    return model, info


def describes_itself(path: str | os.PathLike) -> bool:
    """Whether the weights at ``path`` say which model they are for (a training checkpoint or
    run directory, an export with its sidecar, a hub reference): :func:`load_model` rebuilds
    those. A bare weights file (a timm ``.pth``/``.safetensors``) does not: the caller's
    ``model.*`` keys give the model."""
    if is_hub_ref(path):
        return True
    p = _weights_of(Path(path))
    return p.is_dir() or (p.is_file() and p.with_suffix(".json").is_file())


def _weights_of(p: Path) -> Path:
    """The weights file an export's sidecar stands for, where the sidecar was named."""
    return (
        p.with_suffix(".safetensors")
        if p.suffix == ".json" and p.with_suffix(".safetensors").is_file()
        else p
    )


def load_model(path: str | os.PathLike, *, ema: bool = False) -> tuple[nn.Module, dict]:
    """``(model in eval mode, info)`` from a training checkpoint (or run directory), an exported
    weights file with its sidecar, or ``hf-hub:ORG/NAME[@REVISION]``: the model, its classes and
    its preprocessing from what those hold (``info`` has the export sidecar's keys: model_name,
    num_classes, classes, img_size, mean, std, crop_pct, interpolation, step, source)."""
    if is_hub_ref(path):
        if ema:
            raise ConfigError("ema=true applies to training checkpoints, not hf-hub: weights")
        return load_hub_model(str(path))
    p = _weights_of(Path(path))
    if p.is_dir():
        return load_checkpoint_model(p, ema=ema)
    if ema and p.is_file():
        raise ConfigError("ema=true applies to training checkpoints; export with ema=true instead")
    return load_export(p)


SIDECAR_LIMIT = 16 * 1024 * 1024  # bytes of an export sidecar (100k class names fit)


def read_sidecar(weights: Path) -> dict | None:
    """The export sidecar JSON beside ``weights`` (same stem), validated (:func:`check_sidecar`),
    or None when there is none."""
    sidecar = weights.with_suffix(".json")
    if not sidecar.exists():
        return None
    info = load_json_object(sidecar, limit=SIDECAR_LIMIT, error=CheckpointError, what="export sidecar")
    check_sidecar(info, str(sidecar))
    return info


def check_sidecar(info: dict, source: str) -> None:
    """Every field predict, evaluate and distillation read from an export sidecar, checked for
    type and range (one CheckpointError line naming the file and the field): preprocessing with
    one finite mean and a positive std per input channel, ``img_size`` > 0, ``crop_pct`` in
    (0, 1], as many class names as ``num_classes``."""
    f = Fields(info, source=source, error=CheckpointError)
    f.text("model_name")
    kwargs = f.section("model_kwargs")
    assert kwargs is not None  # required
    chans = kwargs.integer("in_chans", minimum=1, maximum=64, required=False, default=3)
    f.integer("img_size", minimum=1, maximum=MAX_IMG_SIZE)
    f.numbers("mean", count=chans)
    f.numbers("std", count=chans, positive=True)
    f.number("crop_pct", above=0.0, maximum=1.0)
    f.text("interpolation", required=False)
    num_classes = f.integer("num_classes", minimum=1, maximum=10_000_000, required=False)
    classes = f.texts("classes", required=False)
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise CheckpointError(f"{source}: classes lists {len(classes)} names for num_classes={num_classes}")


MAX_IMG_SIZE = 16384  # pixels a side: past any model input, far below an allocation failure


def create_bounded(name: str, kwargs: dict, weights: Path) -> nn.Module:
    """``create_model(name, **kwargs)``, first built on the meta device (no memory) to refuse
    an architecture with more parameters than the weights file has bytes: an edited
    ``embed_dim`` must not allocate terabytes before any check."""
    with torch.device("meta"):
        shape = create_model(name, **kwargs)
    params = sum(p.numel() for p in shape.parameters())
    size = weights.stat().st_size
    if params > size:
        raise CheckpointError(
            f"{weights.with_suffix('.json')} describes a {name} of {params:,} parameters, more than "
            f"{weights.name} has bytes ({size:,}): its model_kwargs do not belong to these weights"
        )
    return create_model(name, **kwargs)


def load_export(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """``(model in eval mode, info)`` from an exported weights file and its sidecar JSON."""
    weights = Path(path)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint={path}: no such file or directory")
    info = read_sidecar(weights)
    if info is None:
        raise CheckpointError(
            f"{weights}: no {weights.with_suffix('.json').name} beside it (python -m vit_dist.export "
            f"writes it: model name, classes and preprocessing are needed to predict)"
        )
    name, kwargs = info["model_name"], dict(info["model_kwargs"])
    try:
        check_model_kwargs(name, kwargs)
    except ValueError as e:  # a ConfigError: here the sidecar's fault, not the command line's
        raise CheckpointError(f"{weights.with_suffix('.json')}: {e}") from None
    model = create_bounded(name, kwargs, weights)
    load_weights(model, weights)
    model.eval()
    info.setdefault("num_classes", model.num_classes)
    info.setdefault("classes", None)
    return model, info


def hub_model_spec(ref: str, key: str = "checkpoint") -> tuple[str, dict, HubModelConfig]:
    """``(model name, model keywords, config)`` of the model a hub repository's ``config.json``
    describes: its ``architecture`` is one of our registered models (timm's names), or else,
    with timm installed, timm's own (``timm:<architecture>``); built with the repository's
    ``num_classes``, input size, channels, global pooling and ``model_args``. Anything else is
    one CheckpointError naming what we have."""
    hub_ref = parse_ref(ref, key)
    hc = read_config(hub_ref)
    # A name may carry timm's pretrained tag (vit_base_patch16_224.augreg_in21k): not ours.
    name = hc.architecture.split(".")[0]
    if name not in list_models():
        if timm_installed() and list_timm_models(name) == [name]:
            name = f"{TIMM_PREFIX}{name}"
        else:
            raise CheckpointError(
                f"{hub_ref}: architecture {hc.architecture!r} is neither a vit_dist model nor "
                f"{'a timm one' if timm_installed() else 'buildable without timm (pip install vit_dist[timm])'}; "
                f"we have: {', '.join(list_models())}"
            )
    kwargs = dict(hc.model_args)
    kwargs.update(num_classes=hc.num_classes, img_size=hc.img_size, in_chans=hc.in_chans)
    if hc.global_pool is not None:
        kwargs["global_pool"] = hc.global_pool
    try:
        check_model_kwargs(name, kwargs)
    except ValueError as e:
        raise CheckpointError(f"{hub_ref}: config.json does not fit vit_dist's {name} ({e})") from None
    return name, kwargs, hc


def load_hub_model(ref: str) -> tuple[nn.Module, dict]:
    """``(model in eval mode, info)`` from ``hf-hub:ORG/NAME[@REVISION]`` alone (predict): the
    model, preprocessing and class names from the repository's ``config.json``; its weights
    must fit exactly (a classifier of another size is an error here, not re-initialised)."""
    name, kwargs, hc = hub_model_spec(ref)
    try:
        model = create_model(name, **kwargs)
    except ValueError as e:  # a keyword value the model refuses (e.g. a global_pool it lacks)
        raise CheckpointError(f"{ref}: config.json does not fit vit_dist's {name} ({e})") from None
    report = load_pretrained(model, ref, verbose=False)
    if report.head_reinitialised:
        raise CheckpointError(
            f"{report.path}: the weights do not fit config.json ({'; '.join(report.notes)})"
        )
    model.eval()
    info = {
        "format": EXPORT_FORMAT,
        "model_name": name,
        "model_kwargs": _jsonable(model.model_kwargs),
        "num_classes": hc.num_classes,
        "classes": hc.label_names,
        "img_size": hc.img_size,
        "mean": list(hc.mean),
        "std": list(hc.std),
        "crop_pct": hc.crop_pct,
        "interpolation": hc.interpolation,
        "step": None,
        "ema": False,
        "source": report.path,
    }
    return model, info


def _new_file_mode(directory: Path) -> int:
    """The permission bits a file created here gets (0666 less the process umask)."""
    probe = directory / f".mode-probe-{os.getpid()}"
    try:
        probe.touch()
        return stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink(missing_ok=True)


def write_weights(model: nn.Module, out: str | os.PathLike, info: dict) -> Path:
    """Write ``model``'s state dict to ``out`` (.safetensors) and ``info`` to the sidecar JSON
    with the same stem, each atomically. Returns the weights path."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"out={out}: the exported file must end in .safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Clones: safetensors refuses tensors that share storage, and the file must not depend on
    # how the live model happens to lay out its parameters.
    sd = {
        clean_param_name(k): v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
    }
    sidecar = out.with_suffix(".json")
    had = out.exists()
    try:
        # Both files are written in full before either replaces the old one, so a failed write
        # (a full disk) leaves the previous export whole, weights and sidecar alike.
        with atomic.atomic_path(out) as tmp, atomic.atomic_path(sidecar) as tmp_json:
            _save_safetensors(
                sd, tmp, metadata={"format": "pt", "model_name": str(info.get("model_name", ""))}
            )
            # safetensors creates its file private (0600); give it the mode of a file created
            # by this process, like the JSON sidecar.
            os.chmod(tmp, _new_file_mode(out.parent))
            tmp_json.write_text(json.dumps({**info, "weights": out.name}, indent=1) + "\n", encoding="utf-8")
    except OSError as e:
        kept = f"the previous export {out} is intact" if had else "nothing was exported"
        raise CheckpointError(f"could not write {out}: {os_reason(e)}; {kept}") from None
    return out


def _save_safetensors(sd: dict, path: Path, metadata: dict) -> None:
    """``safetensors.torch.save_file``, its I/O failures (a Rust error carrying "(os error 28)")
    raised as the OSError they are."""
    try:
        save_file(sd, str(path), metadata=metadata)
    except Exception as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None


def export_checkpoint(
    path: str | os.PathLike, out: str | os.PathLike | None = None, *, ema: bool = False
) -> Path:
    """Export a checkpoint (see the module docstring); returns the written ``.safetensors``."""
    model, info = load_checkpoint_model(path, ema=ema)
    if out is None:
        out = run_dir_of(Path(info["source"])) / "export" / f"{'model_ema' if ema else 'model'}.safetensors"
    return write_weights(model, out, info)
