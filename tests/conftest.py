"""Fixtures both test tiers share: small shard sets on disk (the data-layer tests), and the topic
fixtures of tests/support/ (hostile images, image folders, a hub cache, a SLURM cluster)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.data_hostile import bounded_reads, decodes  # noqa: F401  (fixtures, shared by both tiers)
from support.data_shards import folder  # noqa: F401  (fixtures, shared by both tiers)
from support.hub import hub, weights  # noqa: F401  (fixtures, shared by both tiers)
from support.launch import slurm  # noqa: F401  (fixtures, shared by both tiers)

# vit_dist.data is imported inside the fixtures: other test modules do not pay for it.


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> Path:
    """The real digits data set as 16 px shards (train 1437, val 360 samples), written once."""
    from vit_dist.data.writers import ensure_digits_shards

    return ensure_digits_shards(tmp_path_factory.mktemp("digits") / "shards", img_size=16)


def _digit_jpeg(i: int, size: int = 16) -> tuple[bytes, int]:
    from sklearn.datasets import load_digits

    d = _digit_jpeg.cache = getattr(_digit_jpeg, "cache", None) or load_digits()
    j = i % len(d.target)
    im = Image.fromarray((d.images[j] * 16).clip(0, 255).astype(np.uint8)).resize((size, size)).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue(), int(d.target[j])


@pytest.fixture
def make_data_shards(tmp_path) -> Callable[..., Path]:
    """``make(sizes, split="train", edit=None) -> dir``: shards of exactly ``sizes`` digit samples,
    keys ``s{shard}_{i}``, plus dataset.json. ``edit(shard, i, files) -> files`` may corrupt a sample
    (return a changed dict of ``ext -> bytes``)."""

    from vit_dist.data.meta import write_meta

    def make(sizes: list[int], split: str = "train", edit=None, name: str = "shards") -> Path:
        out = tmp_path / name
        out.mkdir(exist_ok=True)
        shards, n = [], 0
        for s, size in enumerate(sizes):
            path = out / f"{split}-{s:06d}.tar"
            with tarfile.open(path, "w") as tf:
                for i in range(size):
                    jpg, label = _digit_jpeg(n)
                    n += 1
                    files = {"jpg": jpg, "cls": str(label).encode()}
                    if edit is not None:
                        files = edit(s, i, files)
                    for ext, data in files.items():
                        info = tarfile.TarInfo(f"s{s}_{i}.{ext}")
                        info.size = len(data)
                        tf.addfile(info, io.BytesIO(data))
            shards.append({"name": path.name, "num_samples": size, "num_bytes": path.stat().st_size})
        classes = [str(c) for c in range(10)]
        write_meta(
            out,
            {"source": "test", "classes": classes, "splits": {split: {"num_samples": n, "shards": shards}}},
        )
        return out

    return make
