"""DeiT distillation: the losses by hand, a frozen teacher, and 2-process DDP/FSDP runs whose
distillation head learns to agree with the teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import CONFIG

from vit_dist.core.config import load_config
from vit_dist.training.distill import Renormalize, build_teacher, distillation_loss


def test_hard_and_soft_losses_by_hand():
    torch.manual_seed(0)
    b, c = 4, 5
    cls, dist, teacher = torch.randn(b, c), torch.randn(b, c), torch.randn(b, c)
    y = torch.tensor([0, 3, 1, 4])

    def ce(logits, target):  # -log softmax at the target, averaged
        return -(logits.log_softmax(-1)[torch.arange(b), target]).mean()

    hard = distillation_loss((cls, dist), y, teacher, "hard")
    assert torch.allclose(hard, 0.5 * ce(cls, y) + 0.5 * ce(dist, teacher.argmax(-1)))

    alpha, tau = 0.3, 2.0
    p_t = (teacher / tau).softmax(-1)
    kl = (p_t * (p_t.log() - (dist / tau).log_softmax(-1))).sum(-1).mean()
    soft = distillation_loss((cls, dist), y, teacher, "soft", alpha=alpha, tau=tau)
    assert torch.allclose(soft, (1 - alpha) * ce(cls, y) + alpha * tau**2 * kl, atol=1e-6)

    # soft (mixup) targets and a single-head student
    y_soft = F.one_hot(y, c).float() * 0.7 + 0.3 / c
    got = distillation_loss(cls, y_soft, teacher, "hard")
    expected = 0.5 * (-(y_soft * cls.log_softmax(-1)).sum(-1).mean()) + 0.5 * ce(cls, teacher.argmax(-1))
    assert torch.allclose(got, expected)
    # label smoothing applies to the label term only
    smoothed = distillation_loss((cls, dist), y, teacher, "hard", label_smoothing=0.1)
    assert torch.allclose(
        smoothed, 0.5 * F.cross_entropy(cls, y, label_smoothing=0.1) + 0.5 * ce(dist, teacher.argmax(-1))
    )


def test_renormalize_maps_student_stats_to_teacher_stats():
    x_raw = torch.rand(2, 3, 4, 4)
    s_mean, s_std, t_mean, t_std = [0.5] * 3, [0.5] * 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    student_x = (x_raw - torch.tensor(s_mean).view(1, 3, 1, 1)) / torch.tensor(s_std).view(1, 3, 1, 1)
    teacher_x = (x_raw - torch.tensor(t_mean).view(1, 3, 1, 1)) / torch.tensor(t_std).view(1, 3, 1, 1)
    assert torch.allclose(Renormalize(s_mean, s_std, t_mean, t_std)(student_x), teacher_x, atol=1e-5)
    assert Renormalize(s_mean, s_std, s_mean, s_std).identity


def test_torchvision_teacher_from_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    cfg = load_config(
        CONFIG,
        ["distill.type=hard", "distill.teacher=resnet18", f"distill.teacher_weights={tmp_path / 'r18.pth'}"],
    )
    teacher, what = build_teacher(cfg.distill, 10, 16, 3)
    assert "resnet18" in what and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), ref(x))
    cfg = load_config(CONFIG, ["distill.type=hard", "distill.teacher=resnet18x"])
    with pytest.raises(
        ValueError, match="neither a vit_dist model, timm:<name> nor a torchvision classifier"
    ):
        build_teacher(cfg.distill, 10, 16, 3)
