"""What tests/unit/test_checkpoint.py and tests/integration/test_checkpoint.py share."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from vit_dist.checkpoint import manifest


def _reseal(ckpt: Path, name: str) -> None:
    """Make the manifest agree with a replaced file, as someone who knows the format could."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][name] = manifest.file_record(ckpt / name)
    meta["meta_crc32"] = manifest.meta_crc(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))


class _RunsCode:
    """Pickles to a call of os.system: what a malicious checkpoint holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """A real OS write failure, in this process, without a full disk: while the block runs, a
    write past ``nbytes`` of any file fails with EFBIG (RLIMIT_FSIZE; SIGXFSZ ignored, so the
    write returns the error instead of killing the process). Libraries meet it exactly where
    they would meet ENOSPC: in their own write calls."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
