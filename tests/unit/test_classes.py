"""Classes are checked before the first step and travel with the weights: a val set with other
classes is refused at start-up (not at the first evaluation, after the training is lost), and
export/predict read the names the checkpoint saved, never a dataset.json found from the current
directory."""

from __future__ import annotations

import json

import pytest
from helpers import CONFIG
from support.train import TINY

from vit_dist.core.errors import DataError


def _config(train, val, out, *extra):
    from vit_dist.core.config import load_config

    return load_config(
        CONFIG,
        [
            f"data.train={train}",
            f"data.val={val}",
            "data.workers=0",
            "train.steps=1",
            "logging.wandb=false",
            f"output_dir={out}",
            *TINY[:-1],
            *extra,
        ],
    )


def _rename_classes(directory, classes):
    meta = json.loads((directory / "dataset.json").read_text())
    meta["classes"] = classes
    (directory / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ([str(c) for c in range(11)], "11 classes where 10 are expected"),
        (["zero", *map(str, range(1, 10))], "class 0 is 'zero' where '0' is expected"),
        ([str(c) for c in reversed(range(10))], "the same class names in another order"),
    ],
)
def test_a_val_set_with_other_classes_is_refused_before_the_first_step(
    make_data_shards, tmp_path, classes, expected
):
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    train = make_data_shards([40])
    val = make_data_shards([20], split="val", name="val")
    _rename_classes(val, classes)
    with pytest.raises(DataError) as e:
        Trainer(_config(train, val, tmp_path / "run"), init_distributed())
    assert str(e.value).startswith(
        f"data.val={val} does not have the training data's classes"
    ) and expected in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_class_names_travel_with_the_checkpoint_not_with_the_current_directory(
    make_data_shards, tmp_path, monkeypatch
):
    from vit_dist.checkpoint.weights import checkpoint_classes, load_checkpoint_model
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    make_data_shards([40], name="shards")
    make_data_shards([20], split="val", name="val")
    monkeypatch.chdir(tmp_path)
    Trainer(_config("shards", "val", tmp_path / "run"), init_distributed()).fit()  # relative data.train

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "shards").mkdir(parents=True)
    (elsewhere / "shards" / "dataset.json").write_text(json.dumps({"classes": ["sky"] * 10}))
    monkeypatch.chdir(elsewhere)  # where "shards" is another data set with other names
    digits = [str(c) for c in range(10)]
    assert load_checkpoint_model(tmp_path / "run")[1]["classes"] == digits
    assert checkpoint_classes(tmp_path / "run") == (10, digits)
