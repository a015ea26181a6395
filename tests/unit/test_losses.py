"""The training losses (``train.loss``): BCE as timm computes it (``--bce-loss``), on hard and
mixed targets, for one head and for DeiT's two."""

from __future__ import annotations

import pytest
import torch

from vit_dist.training.distill import distillation_loss
from vit_dist.training.losses import binary_cross_entropy, classification_loss, cross_entropy


def _batch(seed: int = 0, b: int = 6, c: int = 10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * 3, torch.randint(0, c, (b,), generator=g)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_bce_on_hard_targets_is_timms_binary_cross_entropy(smoothing):
    from timm.loss import BinaryCrossEntropy

    logits, y = _batch()
    want = BinaryCrossEntropy(smoothing=smoothing)(logits, y)
    torch.testing.assert_close(binary_cross_entropy(logits, y, smoothing), want, rtol=1e-6, atol=1e-7)
    assert classification_loss(logits, y, smoothing, "bce") == binary_cross_entropy(logits, y, smoothing)


def test_bce_on_mixed_targets_is_bce_with_logits_of_the_soft_targets():
    logits, y = _batch(1)
    soft = torch.softmax(torch.randn(6, 10), dim=-1)  # what mixup / cutmix hand the loss
    want = torch.nn.BCEWithLogitsLoss()(logits, soft)
    torch.testing.assert_close(binary_cross_entropy(logits, soft), want)
    assert not torch.isclose(binary_cross_entropy(logits, soft), cross_entropy(logits, soft))


def test_bce_for_two_heads_and_as_the_label_term_of_distillation():
    (cls, y), (dist, _) = _batch(2), _batch(3)
    both = classification_loss((cls, dist), y, 0.1, "bce")
    torch.testing.assert_close(
        both, (binary_cross_entropy(cls, y, 0.1) + binary_cross_entropy(dist, y, 0.1)) / 2
    )
    teacher = torch.randn(6, 10)
    hard = distillation_loss((cls, dist), y, teacher, "hard", label_smoothing=0.1, loss="bce")
    ce_teacher = torch.nn.functional.cross_entropy(dist, teacher.argmax(-1))
    torch.testing.assert_close(hard, 0.5 * binary_cross_entropy(cls, y, 0.1) + 0.5 * ce_teacher)
