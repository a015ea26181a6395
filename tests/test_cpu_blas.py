"""cpu_blas: the MKL vendor shim is built, loaded before torch, consulted by MKL, and exact.

Each case runs in a fresh interpreter, since the shim only works when loaded before torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vit_dist.cpu_blas import cpu_vendor

PROBE = r"""
import json, sys
import vit_dist
import torch
from vit_dist import cpu_blas
torch.manual_seed(0)
a, b = torch.randn(700, 384, dtype=torch.float64), torch.randn(384, 1152, dtype=torch.float64)
err = ((a.float() @ b.float()).double() - a @ b).abs().max().item()
print(json.dumps({"status": cpu_blas.status(), "queries": cpu_blas.vendor_queries(), "err": err,
                  "mkl": torch.backends.mkl.is_available()}))
"""


def _probe(tmp_path, mode: str | None, code: str = PROBE, **extra_env: str) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), **extra_env}
    env.pop("VIT_DIST_MKL_AMD", None)
    if mode is not None:
        env["VIT_DIST_MKL_AMD"] = mode
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_forced_shim_is_built_loaded_and_asked_by_mkl_with_exact_fp32_results(tmp_path):
    r = _probe(tmp_path, "1")
    assert r["status"].startswith("on:"), r
    assert list((tmp_path / "cache" / "vit_dist").glob("mkl_amd_*.so"))  # built once, cached
    if r["mkl"] and cpu_vendor() == "AuthenticAMD":
        # MKL asked the shim for the vendor (on Intel it may not need to ask: not checked there)
        assert r["queries"] > 0, r
    assert r["err"] < 1e-3  # fp32 rounding of a 384-term sum, not another precision
    again = _probe(tmp_path, "1")  # second process: the cached library, same results
    assert again["status"] == r["status"] and again["err"] == r["err"]


def test_turned_off_or_too_late_leaves_mkl_alone(tmp_path):
    off = _probe(tmp_path, "0")
    assert off["status"].startswith("off") and off["queries"] is None
    late = _probe(
        tmp_path, "1", PROBE.replace("import vit_dist\nimport torch", "import torch\nimport vit_dist")
    )
    assert "torch was imported before vit_dist" in late["status"] and late["queries"] is None


def test_auto_mode_follows_the_cpu_vendor(tmp_path):
    r = _probe(tmp_path, None)
    if cpu_vendor() == "AuthenticAMD":
        assert r["status"].startswith("on:"), r
    else:
        assert r["status"].startswith(("not needed", "not applicable")) and r["queries"] is None, r


def test_damaged_cache_is_rebuilt_and_no_compiler_is_reported(tmp_path):
    assert _probe(tmp_path, "1")["status"].startswith("on:")
    (lib,) = (tmp_path / "cache" / "vit_dist").glob("mkl_amd_*.so")
    lib.write_bytes(b"not a shared library")  # e.g. an interrupted copy of a cache directory
    again = _probe(tmp_path, "1")
    assert again["status"].startswith("on:"), again
    lib.unlink()
    broken = _probe(tmp_path, "1", CC=str(tmp_path / "no-such-cc"))
    assert broken["status"] == "not applied: no working C compiler to build the MKL vendor shim"
    assert broken["queries"] is None and broken["err"] < 1e-3  # torch works as before


def test_a_cache_directory_others_can_write_is_not_used(tmp_path):
    shared = tmp_path / "cache" / "vit_dist"
    shared.mkdir(parents=True)
    shared.chmod(0o777)  # anyone could plant a library here
    r = _probe(tmp_path, "1")
    assert not list(shared.glob("*.so"))  # built in the private fallback under the temp dir
    assert r["status"].startswith("on:"), r


@pytest.mark.parametrize(
    "text,vendor",
    [
        ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n", "AuthenticAMD"),
        ("processor\t: 0\nvendor_id\t: GenuineIntel\n", "GenuineIntel"),
        ("processor\t: 0\nCPU implementer\t: 0x41\n", ""),
    ],
)
def test_cpu_vendor_parses_cpuinfo(text, vendor):
    assert cpu_vendor(text) == vendor
