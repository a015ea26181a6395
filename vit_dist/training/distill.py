"""Knowledge distillation with a frozen teacher (DeiT, Touvron et al. 2021).

The teacher
    A registry model (``distill.teacher: vit_base_patch16_224``), any timm classifier
    (``timm:regnety_160``, with timm installed) or a torchvision classification model (``regnet_y_16gf``, ``resnet50``); weights from a local file (timm
    format, a torchvision state dict, a vit_dist export), a vit_dist checkpoint / run
    directory, whose ``meta.json`` also tells the architecture (then ``distill.teacher`` may be
    left unset), or a timm model on the Hugging Face hub (``hf-hub:ORG/NAME[@REVISION]``),
    whose ``config.json`` tells the architecture and the input statistics (the default of
    ``distill.teacher_mean/std``). The teacher's classifier must predict the data's classes: one
    of another size is an error, never a random head. It is frozen: eval mode, ``requires_grad=False``, run under ``no_grad`` and the
    student's autocast, on exactly the student's (mixup / cutmix-ed) batch, re-normalised when
    its input statistics (``distill.teacher_mean/std``) differ from the student's.

Replicated, not sharded
    The teacher has no gradients and no optimizer state, so each rank holds only its fp32
    weights (RegNetY-16GF: 84M parameters = 336 MB; autocast runs it in bf16/fp16). Sharding it with FSDP would save that memory but add an all-gather of every
    teacher layer on every step, for a forward that is already the larger part of the step
    (16 GFLOPs vs DeiT-S's 4.6). So the teacher is replicated unless its weights exceed
    ``distill.shard_teacher_above_gb`` (default 4 GB) under ``parallel.strategy=fsdp``.

The losses (DeiT paper, section 5)
    hard: 1/2 CE(cls, y) + 1/2 CE(dist, argmax teacher)
    soft: (1 - alpha) CE(cls, y) + alpha tau^2 KL(softmax(teacher / tau) || softmax(dist / tau))
    with the KL averaged over the batch (the paper's formula; DeiT's code divides the summed KL
    by batch x classes instead, i.e. it is smaller by a factor of the number of classes). ``y``
    may be soft (mixup/cutmix with smoothing). A student with one head uses it for both terms
    (classic Hinton distillation).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.store import read_meta, resolve_checkpoint_dir
from ..checkpoint.weights import hub_model_spec, load_weights, read_sidecar
from ..core.config import DataSection, DistillSection
from ..core.errors import CheckpointError, ConfigError
from ..core.hub import is_hub_ref
from ..models import create_model, list_families, list_models, load_pretrained
from ..models.pretrained import read_state_dict
from ..models.protocol import VitDistModel
from ..runtime.distributed import DistEnv
from ..runtime.parallel import shard_frozen
from .losses import LOSSES

log = logging.getLogger(__name__)


def distillation_loss(
    output,
    target: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    alpha: float = 0.5,
    tau: float = 1.0,
    label_smoothing: float = 0.0,
    loss: str = "ce",
) -> torch.Tensor:
    """The DeiT loss. ``output``: (cls_logits, dist_logits) or one logits tensor (B, C); the
    label term is ``train.loss`` (``losses.LOSSES``), the teacher term DeiT's."""
    cls_logits, dist_logits = output if isinstance(output, tuple) else (output, output)
    base = LOSSES[loss](cls_logits, target, label_smoothing)
    t = teacher_logits.detach().float()
    if kind == "hard":
        return 0.5 * base + 0.5 * F.cross_entropy(dist_logits.float(), t.argmax(dim=-1))
    if kind == "soft":
        kl = F.kl_div(
            F.log_softmax(dist_logits.float() / tau, dim=-1),
            F.log_softmax(t / tau, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return (1.0 - alpha) * base + alpha * tau * tau * kl
    raise ValueError(f"distill.type must be 'soft' or 'hard' here, got {kind!r}")


class Renormalize(nn.Module):
    """Map a batch normalised with the student's (mean, std) to the teacher's statistics."""

    scale: torch.Tensor  # buffers (register_buffer)
    shift: torch.Tensor

    def __init__(self, student_mean, student_std, teacher_mean, teacher_std):
        super().__init__()
        s_m, s_s = torch.tensor(student_mean).view(1, -1, 1, 1), torch.tensor(student_std).view(1, -1, 1, 1)
        t_m, t_s = torch.tensor(teacher_mean).view(1, -1, 1, 1), torch.tensor(teacher_std).view(1, -1, 1, 1)
        # x_t = (x * s_s + s_m - t_m) / t_s = x * scale + shift
        self.register_buffer("scale", s_s / t_s, persistent=False)
        self.register_buffer("shift", (s_m - t_m) / t_s, persistent=False)
        self.identity = bool(torch.equal(s_m, t_m) and torch.equal(s_s, t_s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.identity else x * self.scale + self.shift


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm  # only a torchvision teacher needs it

    return tvm.list_models(module=tvm)


def _teacher_from_checkpoint(path: Path) -> tuple[nn.Module, str]:
    """A vit_dist checkpoint / run directory: the architecture comes from its meta.json."""
    target = resolve_checkpoint_dir(path)
    meta = read_meta(target)
    model = create_model(meta["model_name"], **meta["model_kwargs"])
    return model, load_weights(model, target)


def _sidecar(path: Path) -> dict | None:
    return read_sidecar(path)


def _hub_sidecar(ref: str, num_classes: int) -> dict:
    """What an export sidecar would say about a hub teacher, from its ``config.json``."""
    name, kwargs, hc = hub_model_spec(ref, "distill.teacher_weights")
    if hc.num_classes != num_classes:
        raise CheckpointError(
            f"distill.teacher_weights={ref}: the teacher predicts {hc.num_classes} classes, the data "
            f"has {num_classes}; a teacher must predict the student's classes (fine-tune it first)"
        )
    kwargs.pop("img_size")  # the teacher sees the student's batch: its own size is adapted
    return {"model_name": name, "model_kwargs": kwargs, "mean": list(hc.mean), "std": list(hc.std)}


def build_teacher(
    dcfg: DistillSection, num_classes: int, img_size: int, in_chans: int
) -> tuple[nn.Module, str]:
    """The frozen teacher (on CPU, fp32) and a one-line description of where it came from; a
    hub teacher carries its input statistics as ``model.input_stats`` (mean, std), any other None
    (``models.protocol``; a torchvision teacher is given the member)."""
    hub = dcfg.teacher_weights if is_hub_ref(dcfg.teacher_weights) else None
    weights = Path(dcfg.teacher_weights) if dcfg.teacher_weights and not hub else None
    if weights is not None and not weights.exists():
        raise FileNotFoundError(f"distill.teacher_weights not found: {weights}")
    if weights is not None and weights.is_dir():
        model, source = _teacher_from_checkpoint(weights)
    else:
        side: dict | None
        side = _hub_sidecar(hub, num_classes) if hub else _sidecar(weights) if weights is not None else None
        name = dcfg.teacher or (side or {}).get("model_name")
        if not name:
            raise ConfigError(
                "distill.teacher is not set (a registry, timm:<name> or torchvision model name)"
            )
        kwargs = dict((side or {}).get("model_kwargs") or {}) if side and not dcfg.teacher else {}
        kwargs.update(dcfg.teacher_kwargs)
        if name in list_models() or name in list_families() or name.startswith("timm:"):
            kwargs.setdefault("num_classes", num_classes)
            kwargs.setdefault("img_size", img_size)
            kwargs.setdefault("in_chans", in_chans)
            model = create_model(name, **kwargs)
            source = "random init (no weights!)"
            ref = hub or weights  # a hub reference (load_pretrained resolves it) or a local file
            if ref is not None:
                report = load_pretrained(model, ref, verbose=False)
                if report.head_reinitialised:  # a random classifier would teach noise
                    raise CheckpointError(
                        f"distill.teacher_weights={dcfg.teacher_weights}: {'; '.join(report.notes)}; "
                        "a teacher must predict the student's classes"
                    )
                source = str(report)
            if hub and side is not None:  # hub: side is its config.json's (_hub_sidecar)
                model.input_stats = (side["mean"], side["std"])
        elif hub:
            raise CheckpointError(
                f"distill.teacher={name!r} is not a vit_dist model: hf-hub: teacher weights need one"
            )
        elif name in _torchvision_names():
            import torchvision.models as tvm  # only a torchvision teacher needs it

            kwargs.setdefault("num_classes", num_classes)
            model = tvm.get_model(name, weights=None, **kwargs)
            model.input_stats = None  # the contract's member (models.protocol): the data's statistics
            if weights is None:
                source = "random init (no weights!)"
            else:
                sd = read_state_dict(weights)
                missing, unexpected = model.load_state_dict(sd, strict=False)
                if missing or unexpected:
                    raise CheckpointError(
                        f"{weights} does not fit torchvision {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
                    )
                source = f"torchvision {name} weights from {weights}"
        else:
            raise ConfigError(
                f"distill.teacher={name!r} is neither a vit_dist model, timm:<name> nor a torchvision classifier"
            )
    if weights is None and not hub:
        log.warning("distill: the teacher %s has no weights (distill.teacher_weights unset)", dcfg.teacher)
    model.eval()
    model.requires_grad_(False)
    return model, source


class FrozenTeacher(nn.Module):
    """Teacher + input re-normalisation; always eval, never a gradient."""

    def __init__(self, model: nn.Module, renorm: Renormalize):
        super().__init__()
        self.model = model
        self.renorm = renorm
        super().train(False)

    def train(self, mode: bool = True):  # the teacher stays in eval mode whatever its parent does
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(self.renorm(x))
        return out[0] if isinstance(out, tuple) else out  # (B, C)


def frozen_teacher(
    distill: DistillSection, d: DataSection, precision: str, num_classes: int, env: DistEnv, *, fsdp: bool
) -> FrozenTeacher:
    """The run's teacher (``distill.*``) on ``env.device``, re-normalising the student's input
    (the ``data`` section's statistics), replicated on every rank or, under FSDP when it is
    larger than ``distill.shard_teacher_above_gb``, sharded at ``precision`` (see the module
    docstring)."""
    model, source = build_teacher(distill, num_classes, d.img_size, d.in_chans)
    # A hub teacher's own statistics (its config.json) unless distill.teacher_mean/std say otherwise.
    # Every teacher has the contract's input_stats (build_teacher gives a torchvision one the member).
    mean, std = cast(VitDistModel, model).input_stats or (d.mean, d.std)
    renorm = Renormalize(d.mean, d.std, distill.teacher_mean or mean, distill.teacher_std or std)
    teacher = FrozenTeacher(model, renorm).to(env.device)
    gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    sharded = fsdp and gb > distill.shard_teacher_above_gb
    if sharded:
        shard_frozen(model, env, precision)
    if env.is_main:
        log.info(
            "distill (%s, alpha %s, tau %s): teacher %s, %.2f GB, %s",
            distill.type,
            distill.alpha,
            distill.tau,
            source,
            gb,
            "FSDP-sharded" if sharded else "replicated on every rank",
        )
    return teacher
