"""Optimizer, parameter groups and learning-rate schedule.

- AdamW (fused where the device supports it), SGD or LAMB (``lamb.py``); weight decay only on weight matrices: norms,
  biases, position embeddings, class/distillation tokens and Swin's relative-position tables
  are exempt (the model names the last ones in ``no_weight_decay()``: a name component, a name
  ending or, as timm writes some, a shell-style pattern such as ``pos_embed.*``).
- Layer-wise lr decay (BEiT / MAE fine-tuning): layer id 0 for everything before the first
  transformer block (patch embedding, tokens), i + 1 for block i, and L + 1 for what follows the
  last block (final norm, head); parameters between blocks (Swin's patch merging) take the id of
  the next block. Group lr = lr * decay ** (L + 1 - id). A model with its own ``layer_ids()``
  (timm models: timm's ``group_matcher``, the grouping of ``timm.optim.param_groups_layer_decay``)
  assigns the ids itself.
- Per-step schedule: linear warmup from ``warmup_lr``, then cosine, linear, step or constant,
  and an optional cooldown at ``min_lr`` (:class:`Schedule`),
  checkpointed with its peak lr and run length as one component (:class:`LrSchedule`), which
  a resume then fits to this run's peak lr and length.
Works on the parallelized model: FSDP2 keeps parameter names, DDP adds ``module.``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
from typing import cast

import torch
from torch import nn

from ..models.pretrained import clean_param_name
from ..models.protocol import VitDistModel
from .lamb import Lamb


def layer_ids(model: nn.Module, blocks: list[nn.Module]) -> tuple[dict[str, int], int]:
    """Map parameter name -> layer id (see module docstring); returns (ids, num_layers + 2), or
    the model's own ``layer_ids()`` where it answers (not None; ``models.protocol``)."""
    if (result := cast(VitDistModel, model).layer_ids()) is not None:  # a vit_dist model's
        return result
    block_of: dict[int, int] = {}
    for i, blk in enumerate(blocks):
        for p in blk.parameters():
            block_of[id(p)] = i + 1
    named = list(model.named_parameters())
    ids: dict[str, int] = {}
    n = len(blocks)
    for idx, (name, p) in enumerate(named):
        if id(p) in block_of:
            ids[name] = block_of[id(p)]
            continue
        following = next((block_of[id(q)] for _, q in named[idx + 1 :] if id(q) in block_of), None)
        if following is None:
            ids[name] = n + 1  # after the last block: final norm, head
        elif following == 1:
            ids[name] = 0  # before the first block: embeddings and tokens
        else:
            ids[name] = following  # between blocks (Swin patch merging)
    return ids, n + 2


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_keywords: set[str] | None = None,
    layer_decay: float | None = None,
    blocks: list[nn.Module] | None = None,
) -> list[dict]:
    """Parameter groups with ``weight_decay`` and an ``lr_scale`` each (1.0 without layer decay)."""
    keywords = set(no_decay_keywords or ())
    ids, num_layers = layer_ids(model, blocks or []) if layer_decay else ({}, 1)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        short = clean_param_name(name)
        no_decay = p.ndim <= 1 or any(
            k in short.split(".") or short.endswith(k) or fnmatch.fnmatchcase(short, k) for k in keywords
        )
        lid = ids.get(name, 0)
        key = (lid, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers - 1 - lid) if layer_decay else 1.0
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(short)
    return [groups[k] for k in sorted(groups)]


@functools.cache
def fused_available(device_type: str) -> bool:
    """Whether this torch has a fused AdamW kernel for the device type: the fastest optimizer
    step where it exists (BENCHMARKS.md has the CPU comparison)."""
    try:
        p = torch.zeros(1, device=device_type, requires_grad=True)
        torch.optim.AdamW([p], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


OPTIMIZERS = ("adamw", "sgd", "lamb")


def build_optimizer(
    groups: list[dict],
    lr: float,
    device: torch.device,
    *,
    name: str = "adamw",
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = True,
) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``groups`` (each with its weight decay and ``lr_scale``):
    AdamW (fused where the device has the kernel), SGD with (Nesterov) momentum and L2 weight
    decay as timm's ``--opt sgd``, or LAMB (:class:`lamb.Lamb`)."""
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if name == "adamw":
        kwargs = {"fused": True} if fused_available(device.type) else {"foreach": True}
        return torch.optim.AdamW(clean, lr=lr, betas=tuple(betas), eps=eps, **kwargs)
    if name == "sgd":
        return torch.optim.SGD(
            clean, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, foreach=True
        )
    if name == "lamb":
        return Lamb(clean, lr=lr, betas=tuple(betas), eps=eps)
    raise ValueError(f"unknown optimizer {name!r}")  # a bug: the config only lets OPTIMIZERS through


SCHEDULES = ("cosine", "step", "linear", "constant")


def lr_factor(
    step: float,
    total_steps: int,
    warmup_steps: int,
    min_ratio: float,
    *,
    kind: str = "cosine",
    warmup_ratio: float = 0.0,
    cooldown: int = 0,
    decay_every: int = 0,
    decay_rate: float = 0.1,
) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based; a re-anchored step can be
    fractional): linear warmup from ``warmup_ratio`` (optim.warmup_lr / lr) to 1, then ``kind``
    until ``total_steps - cooldown``, then ``min_ratio`` for the cooldown.

    cosine and linear go from 1 to ``min_ratio`` over the steps between warmup and cooldown;
    step multiplies by ``decay_rate`` at every multiple of ``decay_every`` steps, counted from
    step 0 as timm's StepLRScheduler counts them; constant stays at 1."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_ratio + (1.0 - warmup_ratio) * min(1.0, (step + 1) / warmup_steps)
    decay_end = max(warmup_steps, total_steps - cooldown)
    if cooldown > 0 and step >= decay_end:
        return min_ratio
    if kind == "constant":
        return 1.0
    if kind == "step":
        return decay_rate ** math.floor(step / decay_every) if decay_every > 0 else 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, decay_end - warmup_steps))
    if kind == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if kind == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule kind {kind!r}")  # a bug: the config only lets SCHEDULES through


@dataclasses.dataclass
class Schedule:
    """The lr multiplier per optimizer step: :func:`lr_factor` over ``total`` schedule steps.

    Optimizer step ``s`` is at schedule position ``s`` until a resume re-anchors it
    (:meth:`reanchor`): a run resumed with another number of steps per epoch (world size,
    batch size) continues from the position it had reached and arrives at ``total`` at its new
    last step, so the lr neither jumps nor ends early or late. ``cooldown`` and
    ``decay_every`` are positions too, in the steps of the layout that made the schedule.
    """

    total: int
    warmup: int
    min_ratio: float
    kind: str = "cosine"
    warmup_ratio: float = 0.0
    cooldown: int = 0
    decay_every: int = 0
    decay_rate: float = 0.1
    anchor_step: int = 0  # the optimizer step where the mapping below starts ...
    anchor_position: float = 0.0  # ... and its schedule position
    end_step: int | None = None  # the optimizer step at position ``total`` (None: ``total``)

    @property
    def last_step(self) -> int:
        return self.total if self.end_step is None else self.end_step

    def position(self, step: int) -> float:
        span = self.last_step - self.anchor_step
        if span <= 0:
            return float(self.total)
        return self.anchor_position + (step - self.anchor_step) * (self.total - self.anchor_position) / span

    def reanchor(self, step: int, end_step: int) -> None:
        """From optimizer ``step`` on, reach the end of the schedule at ``end_step``."""
        self.anchor_position, self.anchor_step, self.end_step = self.position(step), step, end_step

    def __call__(self, step: int) -> float:
        return lr_factor(
            self.position(step),
            self.total,
            self.warmup,
            self.min_ratio,
            kind=self.kind,
            warmup_ratio=self.warmup_ratio,
            cooldown=self.cooldown,
            decay_every=self.decay_every,
            decay_rate=self.decay_rate,
        )


def build_scheduler(optimizer, schedule: Schedule):
    # A plain function, not the Schedule itself: LambdaLR would save and restore a callable
    # object's fields in its state_dict, and the trainer decides what a resume restores.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s))


def set_peak_lr(optimizer, scheduler, old_peak: float, new_peak: float) -> None:
    """Scale every group's lr (and the scheduler's base lrs) from ``old_peak`` to ``new_peak``."""
    ratio = new_peak / old_peak
    scheduler.base_lrs = [b * ratio for b in scheduler.base_lrs]
    for g in optimizer.param_groups:
        g["lr"] *= ratio
        if "initial_lr" in g:
            g["initial_lr"] *= ratio


@dataclasses.dataclass(frozen=True)
class RunLength:
    """What decides a run's schedule: the optimizer steps the config asks for, the steps per
    epoch of this layout, and the length as configured (``train.steps``, else ``train.epochs``)."""

    planned_steps: int
    steps_per_epoch: int
    in_steps: bool
    epochs: int | None = None


class LrSchedule:
    """The lr schedule as a checkpointed component (``train_state.Stateful``): the LambdaLR
    scheduler over a :class:`Schedule`, and the peak lr and run length it was made for.

    ``load_state_dict`` restores a checkpoint's schedule as it was saved; a resume then makes
    it this run's with :meth:`set_peak` and :meth:`fit_length` (each says what changed)."""

    def __init__(self, optimizer, schedule: Schedule, peak_lr: float, length: RunLength):
        self.optimizer = optimizer
        self.schedule = schedule
        self.scheduler = build_scheduler(optimizer, schedule)
        self.peak_lr = peak_lr
        self.length = length
        self._configured = dataclasses.replace(schedule)  # this run's own, for another run length

    def step(self) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict:
        return {
            "scheduler": self.scheduler.state_dict(),
            "schedule": dataclasses.asdict(self.schedule),
            "peak_lr": self.peak_lr,
            "length": dataclasses.asdict(self.length),
        }

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        vars(self.schedule).update(state["schedule"])  # in place: the scheduler calls this one
        self.peak_lr = float(state["peak_lr"])
        self.length = RunLength(**state["length"])

    def set_peak(self, peak_lr: float) -> float | None:
        """Make ``peak_lr`` the schedule's peak (this run's ``optim.lr``, scaled by the global
        batch under ``optim.base_batch_size``, must win over a checkpoint's, not be silently
        ignored); returns the peak it replaced, or None when that was the same."""
        if math.isclose(self.peak_lr, peak_lr, rel_tol=1e-12):
            return None
        old = self.peak_lr
        set_peak_lr(self.optimizer, self.scheduler, old, peak_lr)
        self.peak_lr = peak_lr
        return old

    def fit_length(self, length: RunLength, *, step: int, steps_left) -> str | None:
        """Continue the schedule on this run's ``length`` (:func:`resume_schedule`); returns a
        warning for the user when the length changed, else None."""
        warning = resume_schedule(
            self.schedule, self._configured, self.length, length, step=step, steps_left=steps_left
        )
        self.length = length
        return warning


def resume_schedule(
    schedule: Schedule,
    configured: Schedule,
    saved_length: RunLength,
    length: RunLength,
    *,
    step: int,
    steps_left,
) -> str | None:
    """Continue a checkpoint's ``schedule`` (loaded, made for ``saved_length``) on this run's
    ``length``, in place; returns a warning for the user when the length changed, else None.

    - the same plan: the checkpoint's schedule, re-anchored or not, goes on as saved;
    - another number of steps per epoch (world size, batch size) with the length in epochs:
      the epochs still hold, so the schedule is re-anchored at ``step`` to end after
      ``steps_left()`` more steps, and the lr goes on from where it was;
    - another ``train.steps`` / ``train.epochs``: this run's ``configured`` schedule, the one
      of the new length.
    """
    if saved_length.planned_steps == length.planned_steps:
        return None
    if not length.in_steps and saved_length.steps_per_epoch != length.steps_per_epoch:
        left = steps_left()
        schedule.reanchor(step, step + left)
        return (
            f"steps per epoch changed ({saved_length.steps_per_epoch} -> {length.steps_per_epoch}): "
            f"{left} steps left to the end of train.epochs={length.epochs}; the lr schedule goes on from "
            f"{100.0 * schedule.anchor_position / max(1, schedule.total):.1f}% of its length"
        )
    saved_warmup, warmed_up = schedule.warmup, schedule.position(step) >= schedule.warmup
    vars(schedule).update(dataclasses.asdict(configured))
    note = ""
    if warmed_up and schedule.warmup > saved_warmup:
        # The saved run had finished its warmup (a short run is all warmup: it ends at the peak).
        # Its extension goes on from there; warming up again would lower the lr and raise it back.
        schedule.warmup = saved_warmup
        note = f", past its warmup ({saved_warmup} steps, already done)"
    return (
        f"train.steps/train.epochs changed ({saved_length.planned_steps} -> {length.planned_steps} "
        f"steps): the lr schedule is the one for the new length{note}"
    )
