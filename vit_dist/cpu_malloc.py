"""glibc malloc settings for training processes: keep freed activation memory for the next step.

A training step frees and allocates the same large tensors again every step. By default glibc
hands blocks above a moving threshold (128 KiB, rising to at most 32 MiB) to mmap, and returns
freed memory at the top of its heap to the OS past a small trim threshold, so each step
page-faults its activations in again. On 2 CPU cores that kernel time was 10-17 % of a ViT-S or
Swin-T training step. ``tune()`` keeps blocks up to 32 MiB (glibc's maximum) in the heap and
trims only beyond 1 GiB: ViT-S 12.2 -> 14.2 img/s, Swin-T 10.3 -> 11.4, peak RSS unchanged
(1474 -> 1482 MB, 2320 -> 2337 MB). See BENCHMARKS.md.

The entry points (``run_cli``: train, evaluate, predict, export; and the benchmarks) call it; a
plain ``import vit_dist`` changes nothing. ``VIT_DIST_MALLOC=0`` turns it off. Outside glibc
(macOS, musl) nothing changes and ``status()`` says why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "VIT_DIST_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for this setting on 64-bit
TRIM_THRESHOLD = 1 << 30
_state = {"status": "not tried"}


def tune() -> str:
    """Apply the settings once per process (forked loader workers inherit them); returns status()."""
    if _state["status"] != "not tried":
        return _state["status"]
    if os.environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        _state["status"] = f"off ({ENV}=0)"
        return _state["status"]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu = ctypes.CDLL(None).gnu_get_libc_version  # only glibc has it
        gnu.restype = ctypes.c_char_p
        version = gnu().decode()
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError):
        _state["status"] = "not applied: not glibc"
        return _state["status"]
    _state["status"] = (
        f"on: glibc {version} mmap threshold 32 MiB, trim threshold 1 GiB"
        if ok
        else f"not applied: glibc {version} refused mallopt"
    )
    return _state["status"]


def status() -> str:
    return _state["status"]
