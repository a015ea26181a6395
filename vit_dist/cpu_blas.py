"""Let the MKL inside PyTorch use its fast GEMM kernels on AMD CPUs.

Intel MKL chooses its kernels by CPU vendor: on an AMD CPU it takes a slower generic path, so
fp32 matrix products (80 % of a ViT training step on a CPU) run at about half the speed the chip
reaches. Measured on a 2-vCPU AMD EPYC (Zen 5), ViT-S's linear shapes: 224 GFLOP/s through MKL,
498 through oneDNN on the same cores. MKL asks one internal function, ``mkl_serv_intel_cpu_true``,
whether the CPU is Intel. A one-line library that defines it to answer yes, loaded into the
global symbol scope before torch loads MKL, makes MKL dispatch on the instruction sets the CPU
reports (cpuid), as it does on Intel: 532 GFLOP/s on the same shapes, the same fp32 arithmetic.

``enable()`` runs from ``vit_dist/__init__.py`` before anything imports torch. The library is
compiled once with the system C compiler into the user's cache directory. ``VIT_DIST_MKL_AMD``:
``0`` turns it off, ``1`` loads it on any CPU (tests); unset, it is loaded on AMD CPUs only.
Without a C compiler, on another OS, or when torch was imported first, nothing changes and
``status()`` says why (the trainer logs it on CPU runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

ENV = "VIT_DIST_MKL_AMD"
_SOURCE = b"""
int vit_dist_mkl_vendor_queries = 0;
int mkl_serv_intel_cpu_true(void) { vit_dist_mkl_vendor_queries++; return 1; }
"""
_state: dict = {"status": "not tried", "lib": None}


def cpuinfo_field(field: str, cpuinfo: str | None = None) -> str:
    """The first ``field`` of /proc/cpuinfo (or of the given text), '' when absent."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read(65536)
        except OSError:
            return ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == field:
            return value.strip()
    return ""


def cpu_vendor(cpuinfo: str | None = None) -> str:
    """'AuthenticAMD', 'GenuineIntel', ... or '' when unknown."""
    return cpuinfo_field("vendor_id", cpuinfo)


def cpu_name() -> str:
    """The CPU model for benchmark records, e.g. 'AMD EPYC' (what the VM exposes)."""
    return cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def _private_dir(path: str) -> bool:
    """Ours alone: a library loaded from a directory others can write to could be anyone's code."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022 and os.access(path, os.W_OK)


def _cache_dir() -> str | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    # A read-only home (some clusters): a private directory under /tmp instead.
    for path in (
        os.path.join(base, "vit_dist"),
        os.path.join(tempfile.gettempdir(), f"vit_dist-{os.getuid()}"),
    ):
        with contextlib.suppress(OSError):
            os.makedirs(path, mode=0o700, exist_ok=True)
        if _private_dir(path):
            return path
    return None


def _compile(cc: str, lib: str) -> bool:
    # Ranks of one job may build at once, on several nodes sharing a home: each writes its own
    # temporary file and renames it into place (atomic; the last one wins, all are identical).
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(lib), suffix=".tmp", dir=os.path.dirname(lib))
        os.close(fd)
        subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-x", "c", "-", "-o", tmp],
            input=_SOURCE,
            check=True,
            capture_output=True,
            timeout=60,
        )
        os.replace(tmp, lib)
        return True
    except (OSError, subprocess.SubprocessError):
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        return False


def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded shim, '') or (None, why not). Built once per machine type, then cached."""
    cache = _cache_dir()
    if cache is None:
        return None, "no private cache directory to build the MKL vendor shim in"
    key = hashlib.sha256(_SOURCE + platform.machine().encode()).hexdigest()[:12]
    lib = os.path.join(cache, f"mkl_amd_{key}.so")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    error: OSError | None = None
    for rebuild in (False, True):
        if (rebuild or not os.path.exists(lib)) and not (cc and _compile(cc, lib)):
            return None, "no working C compiler to build the MKL vendor shim"
        try:
            return ctypes.CDLL(lib, mode=os.RTLD_GLOBAL), ""
        except OSError as e:  # a damaged cached file (an interrupted copy): build it again, once
            error = e
    return None, f"could not load {lib}: {error}"


def enable() -> str:
    """Load the shim if it applies (see the module docstring); returns ``status()``."""
    if _state["status"] != "not tried":
        return _state["status"]
    mode = os.environ.get(ENV, "auto").strip().lower()
    vendor = cpu_vendor()
    if mode in ("0", "off", "false", "no"):
        status = f"off ({ENV}=0)"
    elif not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        status = "not applicable (not Linux on x86-64)"
    elif mode == "auto" and vendor != "AuthenticAMD":
        status = f"not needed ({vendor or 'unknown'} CPU)"
    elif "torch" in sys.modules:
        status = "not applied: torch was imported before vit_dist (import vit_dist first)"
    else:
        _state["lib"], why = _load()
        if _state["lib"] is None:
            status = f"not applied: {why}"
        else:
            status = f"on: MKL dispatches by instruction set on this {vendor or 'unknown'} CPU"
    _state["status"] = status
    return status


def status() -> str:
    return _state["status"]


def vendor_queries() -> int | None:
    """How often MKL asked the shim for the vendor (None when it is not loaded): > 0 once a
    product has run proves MKL took the answer from it."""
    lib = _state["lib"]
    if lib is None:
        return None
    return ctypes.c_int.in_dll(lib, "vit_dist_mkl_vendor_queries").value
