"""LAMB (You et al., "Large Batch Optimization for Deep Learning", 2019), as timm's ``Lamb``
computes it with its default settings except in-optimizer clipping (``optim.clip_grad`` clips
before every optimizer here): Adam moments with bias correction, L2 weight decay added to the
update, and the update of each parameter scaled by the trust ratio ``||w|| / ||update||`` (1
where either norm is 0), on the parameters that have weight decay only -- norms, biases and
tokens (no-decay groups) take the plain Adam update, as in timm and DeiT III.

torch has no LAMB, so this is ours; tests/unit/test_optim.py checks it against timm's on
several steps. The state is AdamW's (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter), so
checkpoints, FSDP's sharded optimizer state and resharding treat it as they treat AdamW. Under
FSDP2 a parameter is a DTensor shard: its norms are taken over the whole parameter (DTensor
reduces them across the shards), so the trust ratio is the unsharded model's.
"""

from __future__ import annotations

import torch


def _trust_ratio(w_norm: torch.Tensor, u_norm: torch.Tensor) -> torch.Tensor:
    one = torch.ones_like(w_norm)
    return torch.where(w_norm > 0, torch.where(u_norm > 0, w_norm / u_norm, one), one)


class Lamb(torch.optim.Optimizer):
    def __init__(
        self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01
    ):
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"invalid LAMB settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}"
            )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    # Adam's layout: a float32 scalar step on the CPU, moments like the parameter.
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                grad, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                update = (m / (1 - beta1**step)).div_(denom)
                if wd != 0:
                    update.add_(p, alpha=wd)
                    update.mul_(_trust_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)))
                p.add_(update, alpha=-lr)
        return loss
