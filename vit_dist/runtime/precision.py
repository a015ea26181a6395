"""Mixed precision: autocast contexts and a dynamic loss scaler for fp16.

The loss scaler is ours rather than ``torch.amp.GradScaler`` because it must be correct under
FSDP2: the overflow decision comes from the *global* gradient norm (reduced over all shards),
so every rank skips or takes the same step. Its bookkeeping is tensor arithmetic on the
device, so it adds no host-device synchronisation. bf16 and fp32 need no scaling.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Other spellings of the names above ("no"/"none": accelerate's mixed_precision="no").
_DTYPE_ALIASES = {"half": "fp16", "float": "fp32", "no": "fp32", "none": "fp32"}
# Every accepted name of a dtype: DTYPES' own, torch's ("bfloat16", ...) and the aliases.
_DTYPE_BY_NAME = {
    **DTYPES,
    **{str(dtype).removeprefix("torch."): dtype for dtype in DTYPES.values()},
    **{alias: DTYPES[name] for alias, name in _DTYPE_ALIASES.items()},
}


def as_dtype(name_or_dtype) -> torch.dtype:
    """A torch dtype from a dtype or a name (case-insensitive, "torch." prefix allowed);
    None means float32. ValueError for an unknown name."""
    if isinstance(name_or_dtype, torch.dtype):
        return name_or_dtype
    if name_or_dtype is None:
        return torch.float32
    try:
        return _DTYPE_BY_NAME[str(name_or_dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {name_or_dtype!r}") from None


def autocast(device: torch.device, precision: str):
    """Autocast for bf16/fp16 on CUDA or CPU; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


class LossScaler:
    """Dynamic loss scale: halve on overflow, double after ``growth_interval`` clean steps."""

    def __init__(
        self, device: torch.device, enabled: bool, init_scale: float = 2.0**16, growth_interval: int = 2000
    ):
        self.enabled = enabled
        self.growth_interval = growth_interval
        self.scale = torch.tensor(init_scale if enabled else 1.0, device=device, dtype=torch.float32)
        self.good_steps = torch.zeros((), device=device, dtype=torch.int64)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale_(self, grads: list[torch.Tensor]) -> None:
        if self.enabled and grads:
            torch._foreach_mul_(grads, (1.0 / self.scale).to(grads[0].dtype))

    def update(self, found_inf: torch.Tensor) -> None:
        """found_inf: 0-dim float tensor, 1.0 when this step's gradients overflowed."""
        if not self.enabled:
            return
        bad = found_inf > 0
        good = torch.where(bad, torch.zeros_like(self.good_steps), self.good_steps + 1)
        grow = good >= self.growth_interval
        self.scale = torch.where(bad, self.scale * 0.5, torch.where(grow, self.scale * 2.0, self.scale))
        self.good_steps = torch.where(grow, torch.zeros_like(good), good)

    def state_dict(self) -> dict:
        return {
            "scale": self.scale.item(),
            "good_steps": int(self.good_steps.item()),
            "enabled": self.enabled,
        }

    def load_state_dict(self, state: dict) -> None:
        """The saved scale, when the scaler is on both here and in the checkpoint: one that is
        off stays at 1, and an fp16 run resumed from a bf16/fp32 checkpoint (scale 1) starts
        from its own initial scale."""
        if not (self.enabled and state["enabled"]):
            return
        self.scale.fill_(state["scale"])
        self.good_steps.fill_(state["good_steps"])
