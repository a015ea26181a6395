"""Exactly-once evaluation: the one loop that the trainer and ``python -m vit_dist.evaluate`` run.

The eval loader (exact mode) gives every rank the same number of batches and marks padding rows
``valid=False``, so every validation sample is evaluated once on exactly one rank, and a model
whose forward runs collectives (FSDP) never waits on a rank that ran out of data.
:class:`EvalSums` accumulates ``(loss_sum, correct_top1, correct_top5, count)`` over valid rows
only; :meth:`EvalSums.reduce` sums them over ranks with one ``all_reduce`` (every rank must call
it, once), after which top-1/top-5, mean loss and the count equal those of a single-process
evaluation.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..models.protocol import VitDistModel
from ..runtime.distributed import all_reduce, sum_over_ranks
from ..runtime.precision import autocast


class EvalSums:
    """Running sums over valid rows; float64 so that the counts stay exact."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """``logits`` (B, C), ``labels`` (B,) int, ``valid`` (B,) bool (None: all rows count)."""
        if valid is not None:
            logits, labels = logits[valid], labels[valid]
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        k = min(5, logits.shape[-1])
        topk = logits.topk(k, dim=-1).indices  # (B, k)
        hit = topk == labels[:, None]
        self.sums += torch.stack(
            [
                loss.double(),
                hit[:, 0].sum().double(),
                hit.any(-1).sum().double(),
                torch.tensor(len(labels)).double(),
            ]
        ).to(self.sums.device)

    def reduce(self) -> dict[str, float]:
        """Sum over ranks and return ``{"loss", "top1", "top5", "count"}`` (top-k as fractions)."""
        loss, top1, top5, n = sum_over_ranks(self.sums).tolist()
        d = max(n, 1.0)
        return {"loss": loss / d, "top1": top1 / d, "top5": top5 / d, "count": int(n)}


# The confusion matrix is kept up to this many classes (1000 x 1000 int64: 8 MB on every rank);
# above it, per-class top-1 only (ImageNet-21k's would be 3.8 GB).
MAX_CONFUSION_CLASSES = 1000


class PerClass:
    """Per-class counts over valid rows: samples and top-1 hits of each true class, and the
    confusion matrix (rows: true class, columns: predicted) up to ``MAX_CONFUSION_CLASSES``.
    :meth:`reduce` sums them over ranks (a collective: every rank calls it once)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.counts = torch.zeros(2, num_classes, dtype=torch.int64, device=device)  # samples, hits
        small = num_classes <= MAX_CONFUSION_CLASSES
        self.confusion = (
            torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device) if small else None
        )

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        if valid is not None:
            logits, labels = logits[valid], labels[valid]
        labels = labels.to(self.counts.device)
        pred = logits.argmax(-1).to(self.counts.device)
        self.counts[0].index_add_(0, labels, torch.ones_like(labels))
        self.counts[1].index_add_(0, labels, (pred == labels).long())
        if self.confusion is not None:
            self.confusion.view(-1).index_add_(0, labels * self.num_classes + pred, torch.ones_like(labels))

    def reduce(self, classes: list[str] | None = None) -> dict:
        """``{"classes", "count", "top1", "confusion"}``: lists, top-1 None for a class without
        samples, confusion None above ``MAX_CONFUSION_CLASSES``."""
        counts = all_reduce(self.counts.clone()).tolist()
        confusion = all_reduce(self.confusion.clone()).tolist() if self.confusion is not None else None
        return {
            "classes": list(classes) if classes else [str(i) for i in range(self.num_classes)],
            "count": counts[0],
            "top1": [h / n if n else None for n, h in zip(*counts)],
            "confusion": confusion,
        }


def summary_line(result: dict) -> str:
    """The one line a command prints for an evaluation record."""
    if not result:
        return "no evaluation data (data.val unset)"
    s = f"held-out top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, loss {result['loss']:.4f}"
    s += f" on {result['num_samples']} samples"
    if "ema_top1" in result:
        s += f" (EMA top-1 {result['ema_top1']:.4f})"
    return s if math.isfinite(result["top1"]) else s + " (non-finite!)"


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader,
    device: torch.device,
    precision: str,
    *,
    plain_model: nn.Module | None = None,
    teacher: nn.Module | None = None,
    per_class: PerClass | None = None,
) -> dict:
    """Top-1/top-5/loss/num_samples of ``model`` on ``loader``, exactly once per sample, summed
    over ranks (a collective: every rank calls it).

    ``model`` is what runs the forward (possibly DDP/FSDP-wrapped), ``plain_model`` the module
    under it (default: ``model``). For a distilled DeiT (``return_both_heads``) the prediction
    is the mean of its heads, and each head's top-1 is added (``cls_top1``, ``dist_top1``).
    With a ``teacher``: its top-1 (``teacher_top1``) and how often the student's distillation
    head agrees with it (``teacher_agreement``). ``per_class`` (optional) is updated with the
    prediction of every valid row; the caller reduces it."""
    plain_model = plain_model if plain_model is not None else model
    heads = cast(VitDistModel, plain_model)  # the plain model is a vit_dist model (models.protocol)
    model.eval()
    two_heads = heads.return_both_heads is not None  # None: one head (models.protocol)
    sums = {"": EvalSums(device)}
    if two_heads:
        sums.update(cls_=EvalSums(device), dist_=EvalSums(device))
    if teacher is not None:
        sums["teacher_"] = EvalSums(device)
    agree = torch.zeros(2, dtype=torch.float64, device=device)  # (agreements, samples)
    loader.set_epoch(0)
    try:
        if two_heads:
            heads.return_both_heads = True
        for batch in loader:
            x = loader.images(batch, device)
            y = batch["label"].to(device, non_blocking=True)
            valid = batch["valid"].to(device)
            with autocast(device, precision):
                out = model(x)
                teacher_logits = teacher(x) if teacher is not None else None
            if two_heads:
                cls_logits, dist_logits = out
                sums["cls_"].update(cls_logits, y, valid)
                sums["dist_"].update(dist_logits, y, valid)
                out = (cls_logits + dist_logits) / 2
            sums[""].update(out, y, valid)
            if per_class is not None:
                per_class.update(out, y, valid)
            if teacher_logits is not None:
                sums["teacher_"].update(teacher_logits, y, valid)
                student = dist_logits if two_heads else out
                same = (student.argmax(-1) == teacher_logits.argmax(-1)) & valid
                agree += torch.stack([same.sum(), valid.sum()]).double()
    finally:
        if two_heads:
            heads.return_both_heads = False
    record = {}
    for prefix, s in sums.items():
        r = s.reduce()
        if prefix:
            record[f"{prefix}top1"] = r["top1"]
        else:
            record.update(top1=r["top1"], top5=r["top5"], loss=r["loss"], num_samples=r["count"])
    if teacher is not None:
        all_reduce(agree)
        record["teacher_agreement"] = (agree[0] / agree[1].clamp(min=1)).item()
    return record
