"""cpu_malloc: the entry points keep freed tensor memory in the heap instead of page-faulting it
back in every step. Checked with glibc's own accounting (mallinfo2), not with timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import ctypes, json
from vit_dist import cpu_malloc
status = cpu_malloc.tune()
import torch

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mapped = []
try:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    for n in (2_400_000, 5_000_000, 7_500_000):  # 9.6, 20 and 30 MB: a step's activations
        before = libc.mallinfo2().hblkhd  # bytes glibc holds in separate mmaps
        t = torch.ones(n)
        mapped.append(libc.mallinfo2().hblkhd - before)
        del t  # an mmapped block goes back to the OS here: page faults on its next use
except (OSError, AttributeError):
    mapped = None
print(json.dumps({"status": status, "mapped": mapped}))
"""


def _probe(mode: str) -> dict:
    env = {**os.environ, "VIT_DIST_MALLOC": mode}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_keeps_step_sized_tensors_in_the_heap():
    on, off = _probe("1"), _probe("0")
    assert off["status"] == "off (VIT_DIST_MALLOC=0)"
    if not on["status"].startswith("on: glibc"):  # not glibc: the module must say so, and change nothing
        assert on["status"] == "not applied: not glibc"
        return
    assert off["mapped"] is not None, "glibc without mallinfo2 (< 2.33)"
    # Untuned, each tensor gets its own mmap (returned to the OS when freed, faulted in again
    # on the next step); tuned, they all come from the heap, which keeps freed memory.
    assert all(m >= n * 4 for m, n in zip(off["mapped"], (2_400_000, 5_000_000, 7_500_000))), off
    assert on["mapped"] == [0, 0, 0], on


def test_entry_points_apply_it_and_bench_records_it(tmp_path):
    out = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "vit_dist.bench", "model", "--model", "vit_tiny_patch16_224"]
    cmd += ["--img-size", "32", "--batch-size", "2", "--steps", "1", "--warmup", "1", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    rec = json.loads(out.read_text())
    assert rec["malloc"].startswith(("on: glibc", "not applied")), rec["malloc"]
