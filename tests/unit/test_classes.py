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


def _labels_of(loader) -> dict[str, int]:
    """{sample key: label} of one pass over an evaluation loader (valid rows only)."""
    out = {}
    for batch in loader:
        for key, label, valid in zip(batch["key"], batch["label"].tolist(), batch["valid"].tolist()):
            if valid:
                out[key] = label
    return out


def _digit_labels(n: int) -> dict[str, int]:
    from sklearn.datasets import load_digits

    target = load_digits().target
    return {f"s0_{i}": int(target[i]) for i in range(n)}


def test_a_stated_class_map_scores_a_val_subset_or_a_renamed_val_set_against_the_training_classes(
    make_data_shards, tmp_path
):
    """data.val_class_map: a val set with fewer classes in another order (by name), and one with
    other names (a JSON map): each val label comes out as the index of its training class."""
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    train = make_data_shards([40])
    names = [str(c) for c in range(10)]
    _rename_classes(train, [*names, "ten", "eleven"])  # 12 training classes; the val set has 10
    val = make_data_shards([20], split="val", name="val")
    _rename_classes(val, list(reversed(names)))  # val label l is the digit 9 - l
    raw = _digit_labels(20)
    trainer = Trainer(_config(train, val, tmp_path / "a", "data.val_class_map=names"), init_distributed())
    assert trainer.val_loader.num_classes == 12 and trainer.val_loader.classes == [*names, "ten", "eleven"]
    assert _labels_of(trainer.val_loader) == {k: 9 - v for k, v in raw.items()}

    _rename_classes(val, [f"digit-{c}" for c in range(10)])
    table = tmp_path / "map.json"
    table.write_text(json.dumps({f"digit-{c}": "eleven" if c == 3 else str(c) for c in range(10)}))
    trainer = Trainer(_config(train, val, tmp_path / "b", f"data.val_class_map={table}"), init_distributed())
    assert _labels_of(trainer.val_loader) == {k: 11 if v == 3 else v for k, v in raw.items()}


def test_a_class_map_that_does_not_fit_is_one_line_naming_the_class(make_data_shards, tmp_path):
    from vit_dist.core.errors import ConfigError
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    train = make_data_shards([40])
    val = make_data_shards([20], split="val", name="val")
    _rename_classes(val, ["zero", *map(str, range(1, 10))])
    table = tmp_path / "map.json"
    cases = [
        ("names", DataError, "the class 'zero' of data.val="),
        ({"zero": "0"}, ConfigError, "no entry for the class '1' of data.val="),
        ({**{str(c): str(c) for c in range(10)}, "zero": 0}, ConfigError, "'zero' maps to 0"),
        ({**{str(c): str(c) for c in range(10)}, "zero": "nought"}, DataError, "(mapped to 'nought')"),
        ("{", ConfigError, "map.json"),
    ]
    for i, (how, kind, text) in enumerate(cases):
        if how != "names":
            table.write_text(how if isinstance(how, str) else json.dumps(how))
        option = "names" if how == "names" else str(table)
        with pytest.raises(kind) as e:
            Trainer(
                _config(train, val, tmp_path / f"r{i}", f"data.val_class_map={option}"), init_distributed()
            )
        assert text in str(e.value) and "\n" not in str(e.value), (how, str(e.value))
    # Unmapped, the refusal says how to state a mapping.
    with pytest.raises(DataError, match="data.val_class_map=names or a JSON file"):
        Trainer(_config(train, val, tmp_path / "plain"), init_distributed())


def test_evaluate_checks_the_classes_against_the_checkpoint_and_maps_them_when_told(
    make_data_shards, tmp_path, capsys
):
    """The same val samples with their class list reversed (and the labels with it): refused
    unmapped (exit 3, one line); with data.val_class_map=names, the same result as the original."""
    from vit_dist.evaluate import main
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    train = make_data_shards([40])
    val = make_data_shards([20], split="val", name="val")
    Trainer(_config(train, val, tmp_path / "run"), init_distributed()).fit()
    run = tmp_path / "run"

    def evaluate(out, *extra):
        args = [f"checkpoint={run}", f"data.val={val}", "data.workers=0", f"output_dir={out}"]
        code = main([*args, *extra])
        return code, capsys.readouterr().err

    code, err = evaluate(tmp_path / "e0")
    assert code == 0, err
    original = json.loads((tmp_path / "e0" / "eval.json").read_text())

    def flip(shard, i, files):  # label l becomes 9 - l, and the names say so
        return {**files, "cls": str(9 - int(files["cls"])).encode()}

    val = make_data_shards([20], split="val", name="flipped", edit=flip)
    _rename_classes(val, [str(c) for c in reversed(range(10))])
    code, err = evaluate(tmp_path / "e1")
    assert code == 3 and "the same class names in another order" in err and "data.val_class_map" in err
    assert len(err.strip().splitlines()) == 1, err
    assert evaluate(tmp_path / "e2", "data.val_class_map=names")[0] == 0
    mapped = json.loads((tmp_path / "e2" / "eval.json").read_text())
    assert {k: mapped[k] for k in ("top1", "top5", "loss", "num_samples")} == {
        k: original[k] for k in ("top1", "top5", "loss", "num_samples")
    }
