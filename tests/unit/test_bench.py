"""``python -m vit_dist.bench`` user mistakes: one line and exit 2, never a traceback."""

from __future__ import annotations

import sys


def test_compare_timm_without_timm_is_one_line_exit_2(monkeypatch, capsys):
    from vit_dist.bench import main

    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError, as uninstalled
    assert main(["compare-timm", "--model", "vit_tiny_patch16_224", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == "error: compare-timm needs timm: pip install timm (or vit_dist[timm])\n", err
