"""What tests/unit/test_launch.py and tests/integration/test_launch.py share."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from slurm_cluster import SlurmCluster, SlurmUnavailable, ensure_installed

ROOT = Path(__file__).resolve().parents[2]


SMOKE = ROOT / "configs" / "smoke_cpu.yaml"  # 2-process CPU smoke config (tiny ViT, 30 steps)


ACCEL = ROOT / "launch" / "accelerate"


FREE_SMOKE = {
    k: v for k, v in yaml.safe_load(SMOKE.read_text()).items() if k not in ("precision", "parallel")
}


@pytest.fixture(scope="module")
def slurm() -> SlurmCluster:
    """A 2-node cluster (n1, n2 at 127.0.0.1) for this module; its daemons stop at the end, also
    after a failure. Debian's packages are installed first when missing (CI starts bare)."""
    try:
        ensure_installed(timeout=600)
    except SlurmUnavailable as e:
        pytest.skip(f"no SLURM: {e}")
    cluster = SlurmCluster(nodes=("n1", "n2"), cpus_per_node=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
