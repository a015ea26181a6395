"""Exactly-once evaluation sums and cross-rank reductions.

The eval loader (``DataConfig(train=False)``, exact mode) gives every rank the same number of
batches and marks padding rows ``valid=False``, so every validation sample is evaluated once
on exactly one rank, and a model whose forward runs collectives (FSDP) never waits on a rank
that ran out of data. :class:`EvalSums` accumulates ``(loss_sum, correct_top1, correct_top5,
count)`` over valid rows only; :meth:`EvalSums.reduce` sums them over ranks with one
``all_reduce`` (every rank must call it, once), after which top-1/top-5, mean loss and the
count equal those of a single-process evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import all_reduce


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks into a new tensor (identity without a process group). Every rank
    must call it."""
    return all_reduce(values.clone())


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
        loss, top1, top5, n = all_reduce_sum(self.sums).tolist()
        d = max(n, 1.0)
        return {"loss": loss / d, "top1": top1 / d, "top5": top5 / d, "count": int(n)}


def global_bad_samples(loader, device: torch.device | str = "cpu") -> tuple[int, int]:
    """(bad_samples, samples_seen) of ``loader`` summed over ranks, for the ``bad_samples`` metric.

    A collective: call it on every rank at the same step (e.g. at each logging step).
    """
    t = torch.tensor([loader.bad_samples, loader.samples_seen], dtype=torch.float64, device=device)
    bad, seen = all_reduce_sum(t).tolist()
    return int(bad), int(seen)
