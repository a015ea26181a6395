"""The job planner (``python -m vit_dist.data.plan``, ``plan/simulate.py``): its figures against the
loader's own plan, resume and reads, without ever opening a shard."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT, env

from vit_dist.data.plan.__main__ import main


def test_the_module_runs_and_documents_the_cost_model(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--simulate" in out and "streams through the shard from its" in out and "--assume-index" in out
    cmd = [sys.executable, "-m", "vit_dist.data.plan", "/nonexistent", "--world-size", "1", "--workers", "1"]
    bad = subprocess.run([*cmd, "--batch-size", "1"], capture_output=True, text=True, cwd=ROOT, env=env())
    assert (
        bad.returncode == 3
        and bad.stderr.strip()
        == "data error: no dataset.json in /nonexistent: not a " + ("shard directory written by vit_dist")
    )
