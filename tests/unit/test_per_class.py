"""Per-class evaluation (``training.exact_eval.PerClass``) and its files (``metrics.confusion``):
counts over valid rows only, the confusion matrix up to its class limit, the JSON and PNG."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vit_dist.metrics.confusion import CONFUSION_FILE, PER_CLASS_FILE, write_per_class
from vit_dist.training import exact_eval
from vit_dist.training.exact_eval import PerClass


def _logits(pred: list[int], c: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(pred), c).float() * 5


def test_counts_hits_and_confusion_over_valid_rows():
    pc = PerClass(3)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    pc.update(_logits([0, 1, 1, 2, 0, 2], 3), labels)
    # A padded row (valid False) that would count as a class-1 miss if it were counted.
    pc.update(_logits([0, 2], 3), torch.tensor([1, 1]), torch.tensor([False, True]))
    r = pc.reduce(["cat", "dog", "eel"])
    assert r["classes"] == ["cat", "dog", "eel"] and r["count"] == [2, 2, 3]
    assert r["top1"] == [0.5, 0.5, pytest.approx(2 / 3)]
    assert r["confusion"] == [[1, 1, 0], [0, 1, 1], [1, 0, 2]]
    empty = PerClass(4)
    empty.update(_logits([1], 4), torch.tensor([1]))
    assert empty.reduce()["top1"] == [None, 1.0, None, None] and empty.reduce()["classes"] == [
        "0",
        "1",
        "2",
        "3",
    ]


def test_above_the_limit_only_per_class_top1_is_kept(monkeypatch):
    monkeypatch.setattr(exact_eval, "MAX_CONFUSION_CLASSES", 4)
    pc = PerClass(5)
    assert pc.confusion is None
    pc.update(_logits([4, 3], 5), torch.tensor([4, 4]))
    r = pc.reduce()
    assert r["confusion"] is None and r["count"] == [0, 0, 0, 0, 2] and r["top1"][4] == 0.5


def test_the_json_and_the_picture(tmp_path):
    pc = PerClass(3)
    pc.update(_logits([0, 1, 1, 2], 3), torch.tensor([0, 0, 1, 2]))
    record = pc.reduce(["cat", "dog", "eel"])
    written = write_per_class(record, tmp_path)
    assert written == [tmp_path / PER_CLASS_FILE, tmp_path / CONFUSION_FILE]
    assert json.loads((tmp_path / PER_CLASS_FILE).read_text()) == record
    with Image.open(tmp_path / CONFUSION_FILE) as im:
        assert im.format == "PNG" and 300 <= im.width <= 1500 and 300 <= im.height <= 1500
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [PER_CLASS_FILE, CONFUSION_FILE]
    )  # no temp files
    record["confusion"] = None  # above the class limit: the JSON alone
    (other := tmp_path / "other").mkdir()
    assert (
        write_per_class(record, other) == [other / PER_CLASS_FILE] and not (other / CONFUSION_FILE).exists()
    )
