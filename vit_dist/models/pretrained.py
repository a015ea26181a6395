"""Load timm-format weights into our models, safely and loudly.

Accepted files: ``.safetensors`` (read with safetensors) and ``.pth/.pt/.bin`` (``torch.load``
with ``weights_only=True``): a checkpoint can never run code. ``load_pretrained`` also takes
``hf-hub:ORG/NAME[@REVISION]``: the repository's weights file, resolved through the hub cache
(``vit_dist.core.hub``), then loaded like a local file. The state dict may be the file
itself or sit under ``model`` / ``state_dict`` / ``model_ema`` / ``module``; ``module.`` (DDP)
and ``_orig_mod.`` (torch.compile) prefixes are stripped.

Then, in this order: the model's own ``adapt_state_dict`` fits the checkpoint to the
architecture (old Swin layout, position-embedding and relative-position-table resizing); a
classifier whose size differs from the model's is dropped and the model's fresh head kept
(reported); anything else that does not fit raises ``CheckpointMismatchError`` listing the
missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file
from torch import nn

from ..core.errors import CheckpointMismatchError
from ..core.hub import describe, is_hub_ref, parse_ref, weights_file
from .protocol import VitDistModel

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "module")
# Name components that wrappers insert: DDP's ``module`` and torch.compile's ``_orig_mod``.
_WRAPPER_COMPONENTS = ("module", "_orig_mod")
_MAX_LISTED = 12


@dataclass
class LoadReport:
    path: str
    loaded: int = 0
    head_reinitialised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        s = f"loaded {self.loaded} tensors from {self.path}"
        if self.head_reinitialised:
            s += f"; classifier re-initialised ({', '.join(self.head_reinitialised)})"
        return s + "".join(f"; {n}" for n in self.notes)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat {name: tensor} dict on CPU, never executing code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj: object
    if path.endswith(".safetensors"):
        obj = load_file(path, device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle with code or objects: refuse, explain
            raise CheckpointMismatchError(
                f"{path} is not a weights-only checkpoint (refusing to unpickle arbitrary objects): "
                f"{str(e).splitlines()[0]}"
            ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and obj[key]:
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{path} does not hold a state dict of tensors")
    return {clean_param_name(k): v for k, v in obj.items()}


def clean_param_name(name: str) -> str:
    """A parameter or state-dict name without the components that DDP (``module.``) and
    torch.compile (``_orig_mod.``) insert, wherever they sit: the plain model's name."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_COMPONENTS)


def _fmt(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def fit_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], path: str = "<state dict>"):
    """Return (state dict ready for ``load_state_dict``, LoadReport) or raise on a mismatch.
    A ``VitDistModel`` adapts the state dict and names its classifier (``models.protocol``);
    any other module (a training checkpoint of a plain ``nn.Module``) takes it as it is."""
    report = LoadReport(path=path)
    head_prefixes: tuple[str, ...] = ()
    if isinstance(model, VitDistModel):
        sd = model.adapt_state_dict(sd)
        head_prefixes = tuple(model.classifier_prefixes)
    target = model.state_dict()

    # A classifier of another size (e.g. 1000 ImageNet classes -> 10): drop it, keep the fresh head.
    head_keys = [k for k in target if k.startswith(head_prefixes)] if head_prefixes else []
    if head_keys and any(k in sd and sd[k].shape != target[k].shape for k in head_keys):
        n_ckpt = next((sd[k].shape[0] for k in head_keys if k in sd and sd[k].ndim == 2), None)
        for k in head_keys:
            sd.pop(k, None)
        report.head_reinitialised = sorted({k.split(".")[0] for k in head_keys})
        report.notes.append(
            f"checkpoint classifier does not match num_classes={model.num_classes}"
            + (f" (checkpoint: {n_ckpt})" if n_ckpt else "")
        )
    elif head_keys and not any(k in sd for k in head_keys):
        report.head_reinitialised = sorted({k.split(".")[0] for k in head_keys})
        report.notes.append("checkpoint has no classifier")
    allowed_missing = set(head_keys) if report.head_reinitialised else set()
    # A headless model (num_classes=0) simply ignores the checkpoint's classifier.
    ignored = [k for k in sd if k not in target and head_prefixes and k.startswith(head_prefixes)]
    for k in ignored:
        sd.pop(k)

    missing = sorted(k for k in target if k not in sd and k not in allowed_missing)
    unexpected = sorted(k for k in sd if k not in target)
    misshaped = sorted(
        f"{k} {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sd
        if k in target and sd[k].shape != target[k].shape
    )
    if missing or unexpected or misshaped:
        parts = [f"{path} does not fit {type(model).__name__}"]
        if missing:
            parts.append(f"missing {len(missing)}: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_fmt(unexpected)}")
        if misshaped:
            parts.append(f"mis-shaped {len(misshaped)}: {_fmt(misshaped)}")
        raise CheckpointMismatchError("; ".join(parts))
    report.loaded = len(sd)
    return sd, report


def load_pretrained(model: nn.Module, path: str | os.PathLike, verbose: bool = True) -> LoadReport:
    """Load a timm-format checkpoint (a file, or ``hf-hub:ORG/NAME[@REVISION]``) into ``model``
    in place; returns what was done."""
    source = os.fspath(path)
    if is_hub_ref(source):
        ref = parse_ref(source)
        path = weights_file(ref)
        source = describe(ref, path)  # pinned to the commit the weights came from
    sd = read_state_dict(path)
    sd, report = fit_state_dict(model, sd, source)
    with torch.no_grad():
        model.load_state_dict(sd, strict=not report.head_reinitialised)
    if verbose:
        log.log(logging.WARNING if report.head_reinitialised else logging.INFO, str(report))
    return report
