"""Classification losses: cross-entropy (``train.loss=ce``) or binary cross-entropy per class
(``bce``, DeiT III's loss; timm's ``--bce-loss``).

Targets are either class indices (B,) or soft distributions (B, C) from mixup / cutmix (which
already include label smoothing). For BCE the hard targets are smoothed as timm's
``BinaryCrossEntropy`` smooths them (``smoothing / C`` off, ``1 - smoothing + smoothing / C``
on), and the loss is the mean over samples and classes, as ``BCEWithLogitsLoss``. A DeiT distilled model in training returns two logits; with
no teacher both heads learn the labels and the loss is their mean (the teacher losses live in
the distillation module).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross entropy in fp32 for hard (B,) or soft (B, C) targets."""
    logits = logits.float()
    if target.ndim == logits.ndim:  # soft targets (mixup / cutmix); smoothing already applied
        return torch.sum(-target.float() * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def binary_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean per-class binary cross-entropy in fp32 for hard (B,) or soft (B, C) targets."""
    logits = logits.float()
    if target.ndim != logits.ndim:
        off = label_smoothing / logits.shape[-1]
        target = torch.full_like(logits, off).scatter_(
            -1, target.long()[:, None], 1.0 - label_smoothing + off
        )
    return F.binary_cross_entropy_with_logits(logits, target.float())


LOSSES = {"ce": cross_entropy, "bce": binary_cross_entropy}


def classification_loss(
    output, target: torch.Tensor, label_smoothing: float = 0.0, kind: str = "ce"
) -> torch.Tensor:
    loss = LOSSES[kind]
    if isinstance(output, tuple):  # DeiT distilled heads without a teacher
        losses = [loss(o, target, label_smoothing) for o in output]
        return sum(losses[1:], losses[0]) / len(losses)
    return loss(output, target, label_smoothing)
