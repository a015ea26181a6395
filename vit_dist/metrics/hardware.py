"""What the device can do and how much of it a run uses: peak FLOP/s, MFU and peak memory.

The peak FLOP/s that MFU divides by comes from a table of dense tensor-core datasheet figures
for known GPUs, and otherwise from a timed matmul, measured once per process and cached: CPUs,
unknown GPUs and fp32 without TF32 have no datasheet figure that a matmul could reach.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from ..runtime.precision import as_dtype

# Dense (no sparsity) tensor-core peaks in FLOP/s: (bf16/fp16, tf32). Matched in order against
# torch.cuda.get_device_name(), so the specific names come before the generic ones.
_GPU_PEAKS: list[tuple[str, float, float]] = [
    ("H100 PCIE", 756e12, 378e12),
    ("H100 NVL", 835e12, 418e12),
    ("GH200", 989e12, 494e12),
    ("H200", 989e12, 494e12),
    ("H100", 989e12, 494e12),
    ("H800", 989e12, 494e12),
    ("A100", 312e12, 156e12),
    ("A800", 312e12, 156e12),
    ("L40S", 362e12, 183e12),
    ("A10G", 125e12, 62.5e12),
    ("RTX 4090", 165e12, 82.6e12),
]

# Measured peaks of this process, per (device type, dtype).
_MEASURED_PEAKS: dict[tuple[str, torch.dtype], float] = {}


def _as_device(device: Any) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def max_memory_mb(device: Any) -> float:
    """Peak memory in MiB: CUDA allocator peak on GPUs, peak RSS of this process otherwise."""
    dev = _as_device(device)
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    # Imported here: ``resource`` is POSIX-only and only needed off CUDA.
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux but bytes on macOS.
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _tf32_enabled() -> bool:
    if torch.get_float32_matmul_precision() != "highest":
        return True
    precision = getattr(getattr(torch.backends.cuda, "matmul", None), "fp32_precision", None)
    return precision == "tf32"


def table_peak(gpu_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet peak FLOP/s of the GPU named ``gpu_name`` in ``dtype``; None when the GPU
    is not in the table or ``dtype`` is fp32 without TF32."""
    upper_name = gpu_name.upper()
    for key, half_peak, tf32_peak in _GPU_PEAKS:
        if key in upper_name:
            if dtype in (torch.bfloat16, torch.float16):
                return half_peak
            if dtype == torch.float32 and _tf32_enabled():
                return tf32_peak
            return None  # true fp32 (no TF32): not in the table, measure it
    return None


def measure_matmul_peak(device: Any, dtype: Any) -> float:
    """Achieved FLOP/s of a square matmul in ``dtype`` on ``device``: a practical peak, kept
    under ~1 s (the MFU denominator where no datasheet figure applies, and ``bench model``'s)."""
    dev, dtype = _as_device(device), as_dtype(dtype)
    n = 8192 if dev.type == "cuda" else 1024
    # A private generator: measuring (once per process) must not move the training RNG.
    generator = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, generator=generator).to(dtype)
    b = torch.randn(n, n, device=dev, generator=generator).to(dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def seconds_for(matmuls: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(matmuls):
            a @ b
        sync()
        return time.perf_counter() - start

    seconds_for(1)  # warm-up: library initialisation, kernel selection, thread pool start
    one_matmul = seconds_for(1)
    # Size the timed runs from one matmul: ~0.25 s in all, so a slow dtype (bf16 on a CPU
    # without hardware support) costs one iteration instead of a long stall. The best of 3
    # rounds: a round that shared the cores with another process (a loader worker starting,
    # another job) would make the peak too low and the MFU above 1.
    matmuls = max(1, min(33, int(0.08 / max(one_matmul, 1e-6))))
    best = one_matmul if matmuls == 1 else min(seconds_for(matmuls) for _ in range(3))
    return 2.0 * n**3 * matmuls / best


def datasheet_peak(device: Any, dtype: Any) -> float | None:
    """The dense datasheet peak FLOP/s of a known GPU in ``dtype``; None for CPUs and others."""
    dev = _as_device(device)
    if dev.type != "cuda":
        return None
    return table_peak(torch.cuda.get_device_name(dev), as_dtype(dtype))


def peak_flops(device: Any, dtype: Any) -> float:
    """Per-device peak FLOP/s for MFU in ``dtype`` (torch dtype or "bf16"/"fp16"/"fp32"/"no").

    Known GPUs use their dense tensor-core datasheet numbers (fp32 means TF32 when TF32 matmuls
    are enabled). CPUs, unknown GPUs and fp32 without TF32 are measured once with a timed
    matmul and cached per (device type, dtype); a measured peak is what a matmul achieves,
    so MFU against it reads higher than against a datasheet peak.
    """
    dev = _as_device(device)
    dtype = as_dtype(dtype)
    peak = datasheet_peak(dev, dtype)
    if peak is not None:
        return peak
    key = (dev.type, dtype)
    if key not in _MEASURED_PEAKS:
        _MEASURED_PEAKS[key] = measure_matmul_peak(dev, dtype)
    return _MEASURED_PEAKS[key]


def raised_peak(device: Any, dtype: Any, achieved: float) -> float:
    """The peak to divide by once a model achieved ``achieved`` FLOP/s per device, more than
    the peak said (an MFU above 1). A datasheet peak stays (an MFU above it is the FLOP count's
    error, not the peak's). A measured one is measured again, and raised to what the model
    achieved if the matmul still does less: a practical peak is the best seen, so MFU <= 1."""
    dev, dtype = _as_device(device), as_dtype(dtype)
    peak = datasheet_peak(dev, dtype)
    if peak is not None:
        return peak
    key = (dev.type, dtype)
    _MEASURED_PEAKS[key] = max(_MEASURED_PEAKS.get(key, 0.0), measure_matmul_peak(dev, dtype), achieved)
    return _MEASURED_PEAKS[key]


def mfu(flops_per_image: float, images_per_sec_global: float, world_size: int, peak: float) -> float:
    """Model FLOPs utilisation: training costs ~3x the forward FLOPs (forward + 2x backward).

    ``images_per_sec_global`` is the throughput of all ranks together and ``peak`` the
    per-device peak, hence the division by ``world_size``. ``flops_per_image`` is the
    architecture's count (timm's published GMACs x 2), also for a ViT whose last block computes
    only the pooled tokens, so MFU stays comparable across implementations. NaN when the inputs
    make no sense.
    """
    if peak <= 0 or world_size <= 0:
        return float("nan")
    return 3.0 * flops_per_image * images_per_sec_global / (world_size * peak)
