"""Classification losses.

Targets are either class indices (B,) or soft distributions (B, C) from mixup / cutmix (which
already include label smoothing). A DeiT distilled model in training returns two logits; with
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


def classification_loss(output, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    if isinstance(output, tuple):  # DeiT distilled heads without a teacher
        losses = [cross_entropy(o, target, label_smoothing) for o in output]
        return sum(losses[1:], losses[0]) / len(losses)
    return cross_entropy(output, target, label_smoothing)
