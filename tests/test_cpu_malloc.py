"""cpu_malloc: the entry points keep freed tensor memory in the heap instead of page-faulting it
back in every step. Counted in page faults (deterministic), not in time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import json, resource, sys
from vit_dist import cpu_malloc
status = cpu_malloc.tune()
import torch

def step():  # a training step's pattern: allocate and touch 2-30 MB tensors, free them all
    bufs = [torch.ones(n) for n in (2_400_000, 5_000_000, 7_500_000, 600_000, 3_000_000)]
    del bufs

step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
print(json.dumps({"status": status, "faults": faults}))
"""


def _probe(mode: str) -> dict:
    env = {**os.environ, "VIT_DIST_MALLOC": mode}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_stops_refaulting_freed_tensors():
    on, off = _probe("1"), _probe("0")
    assert off["status"] == "off (VIT_DIST_MALLOC=0)"
    if not on["status"].startswith("on: glibc"):  # not glibc: the module must say so, and change nothing
        assert on["status"] == "not applied: not glibc"
        return
    # 50 MB allocated and freed per step: untuned glibc maps about that much in again each time
    assert off["faults"] > 3000, off
    assert on["faults"] < off["faults"] / 2, (on, off)


def test_entry_points_apply_it_and_bench_records_it(tmp_path):
    out = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "vit_dist.bench", "model", "--model", "vit_tiny_patch16_224"]
    cmd += ["--img-size", "32", "--batch-size", "2", "--steps", "1", "--warmup", "1", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    rec = json.loads(out.read_text())
    assert rec["malloc"].startswith(("on: glibc", "not applied")), rec["malloc"]
