"""What the commands tell about themselves and how they read their words: ``--help`` lists every
config key (computed here from the schema, so a key missing from the listing fails) with its
type, default, range or choices and a line of doc, and each command's own options; argparse's
``--key value`` / ``--key=value`` habit means exactly ``key=value``."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT


def test_help_is_grouped_by_section_and_runs_as_a_command():
    proc = subprocess.run(
        [sys.executable, "-m", "vit_dist.train", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    headings = [line for line in proc.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    for section in ("model", "data", "train", "optim", "parallel", "logging", "checkpoint", "top level"):
        assert f"{section}:" in headings, headings
    assert "--use_fsdp" in proc.stdout and "--mixed_precision" in proc.stdout  # accelerate's flags
