"""What tests/unit/test_data_shards.py and tests/integration/test_data_shards.py share."""

from __future__ import annotations

import pytest
from PIL import Image

from vit_dist.data.meta import read_meta
from vit_dist.data.spec import resolve_shards
from vit_dist.data.tar_reader import BadSample, read_slice

COLORS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}  # class -> colour


@pytest.fixture
def folder(tmp_path):
    """train/ and val/ ImageFolder trees of solid-colour images in several formats and sizes."""
    root = tmp_path / "folder"
    for split, n in (("train", 5), ("val", 2)):
        for name, rgb in COLORS.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                im = Image.new("RGB", (60 + 10 * i, 40), rgb)
                im.save(d / f"img{i}.{['jpg', 'png', 'webp'][i % 3]}")
    (root / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff not an image")
    return root


UNRELATED = {"backup-2025.tar": b"my backup", "photos.tar": b"my photos", "notes.txt": b"notes"}


def _add_unrelated_files(out):
    for name, data in UNRELATED.items():
        (out / name).write_bytes(data)


def _assert_one_complete_data_set(out) -> int:
    """Every split of ``out``'s index resolves and every listed sample reads back; -> train shards."""
    for split in read_meta(out)["splits"]:
        shards = resolve_shards(str(out), split)
        for url, size in zip(shards.urls, shards.sizes):
            samples = list(read_slice(url, 0, size))
            assert len(samples) == size and not any(isinstance(s, BadSample) for s in samples)
    for name, data in UNRELATED.items():
        assert (out / name).read_bytes() == data
    return len(read_meta(out)["splits"]["train"]["shards"])


def _assert_clean(out) -> None:
    """Only the index, the shards it lists (and their byte-offset indexes) under their final names
    and the user's files remain."""
    shards = [s for split in read_meta(out)["splits"].values() for s in split["shards"]]
    listed = {s["name"] for s in shards} | {s["index"] for s in shards}
    assert all("/" not in name for name in listed)
    assert {p.name for p in out.iterdir()} == listed | set(UNRELATED) | {"dataset.json"}
