"""Forward FLOPs per image, for MFU logging.

Every model has an analytic ``flops_per_image()`` (2 x multiply-accumulates of the convs,
linears and attention matmuls at its configured image size; norms, softmax and additions are
ignored, as in timm's published GMACs). ``count_flops`` measures the same quantity once with
torch's FlopCounterMode (SDPA forced onto its math path so the attention matmuls are visible);
the tests check that the two agree (``executed=True``: ViT's forward skips the last block's
unread tokens, which the architecture's count includes). A training step costs about 3x the
forward FLOPs.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .protocol import VitDistModel


def flops_per_image(model: VitDistModel, executed: bool = False) -> int:
    """Analytic forward FLOPs for one image at the model's configured size (its
    ``flops_per_image``, ``models.protocol``): the architecture's count (MFU's numerator), or
    with ``executed`` what our forward computes (ViT's last block skips the tokens that no head
    reads)."""
    return int(model.flops_per_image(executed=executed))


def count_flops(
    model: nn.Module, img_size: int | tuple[int, int] | None = None, in_chans: int | None = None
) -> int:
    """Forward FLOPs of one image counted by FlopCounterMode (eval mode, no grad, CPU friendly);
    a size not given is the model's own (then it must be a ``VitDistModel``)."""
    size = img_size or cast(VitDistModel, model).img_size
    h, w = (size, size) if isinstance(size, int) else size
    chans = in_chans or cast(VitDistModel, model).in_chans
    x = torch.zeros(1, chans, h, w, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
