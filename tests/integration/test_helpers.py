"""The test harness itself: a hung subprocess tree fails the test with every process's stacks
and leaves nothing running."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import env, run_process

# A parent that starts a child in its own session (as torchrun starts ranks) and both sleep.
TREE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time\\ndef child_sleeps():\\n    time.sleep(600)\\nchild_sleeps()"],
                 start_new_session=True)
def parent_sleeps():
    time.sleep(600)
parent_sleeps()
"""


def test_a_timeout_dumps_every_process_stack_and_kills_the_tree():
    with pytest.raises(AssertionError) as e:
        run_process([sys.executable, "-c", TREE], 3, env=env())
    msg = str(e.value)
    assert "timed out after 3 s" in msg
    assert "parent_sleeps" in msg and "child_sleeps" in msg, msg  # both stacks, via faulthandler
    assert not _alive_with("child_sleeps")  # the whole tree is gone, also the detached child


def _alive_with(marker: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                continue
    return out
