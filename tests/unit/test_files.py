"""Every small file vit_dist reads (config YAML, dataset.json, meta.json, export sidecars) is
bounded and validated: a hostile or damaged one is one line naming the file and the field, of the
error kind that fits, never a hang, a traceback or a megabyte of message."""

from __future__ import annotations

import json
import os
import time

import pytest

from vit_dist.core.errors import CheckpointError, ConfigError, DataError


def _alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": nine levels of nine aliases, 9**9 = 387 million strings."""
    out = 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        out += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n"
    return out


@pytest.mark.parametrize("where", ["model.foo", "ema", "data.pin_memory", "precision"])
def test_a_yaml_alias_bomb_is_refused_quickly_in_one_short_line(tmp_path, where):
    from vit_dist.core.config import load_config

    section, _, key = where.partition(".")
    body = f"{section}:\n  {key}: *l8\n" if key else f"{section}: *l8\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb() + body)
    start = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert time.monotonic() - start < 10
    assert str(path) in str(e.value) and "aliases" in str(e.value) and len(str(e.value)) < 300


def test_an_alias_bomb_in_an_override_is_refused_too():
    from vit_dist.core.config import load_config

    bomb = "[" + ", ".join(["[" + ", ".join(["x"] * 9) + "]"] * 3) + "]"  # small: accepted as a value
    with pytest.raises(ConfigError, match=r"precision: .* is not one of") as e:
        load_config(None, [f"precision={bomb}", "train.steps=1"])
    assert len(str(e.value)) < 300


def test_an_error_message_never_quotes_more_than_a_prefix_of_a_value():
    from vit_dist.core.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, [f"precision={'x' * 100000}", "train.steps=1"])
    assert len(str(e.value)) < 200


def test_a_key_twice_in_a_config_is_refused_naming_the_key_and_line(tmp_path):
    from vit_dist.core.config import load_config

    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  steps: 1\nmodel:\n  name: vit\ntrain:\n  steps: 5\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: key 'train' appears twice \(line 5\)"):
        load_config(path)
    # A merge key's own keys may be overridden: that is what merges are for.
    path.write_text("base: &b {steps: 1, batch_size: 8}\ntrain:\n  <<: *b\n  steps: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'base'"):
        load_config(path)


def test_an_oversized_config_is_refused_before_it_is_parsed(tmp_path):
    from vit_dist.core.config import CONFIG_LIMIT, load_config

    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (CONFIG_LIMIT // 10 + 1))
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"big.yaml is \d+ bytes, over the 256 KiB a config file may have"):
        load_config(path)
    assert time.monotonic() - start < 2


def test_a_utf16_config_names_the_file_and_the_encoding(tmp_path):
    from vit_dist.core.config import load_config

    path = tmp_path / "utf16.yaml"
    path.write_bytes("train:\n  steps: 1\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"config file .*utf16.yaml is not UTF-8 text \(byte 0\).*UTF-16"):
        load_config(path)


def test_a_fifo_or_a_device_is_never_read_as_a_config(tmp_path):
    from vit_dist.core.config import load_config

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"fifo.yaml is not a regular file \(a FIFO\)"):
        load_config(fifo)
    assert time.monotonic() - start < 2  # never waits for a writer
    with pytest.raises(ConfigError, match=r"/dev/zero is not a regular file \(a character device\)"):
        load_config("/dev/zero")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", "the top level must be an object, found a list"),
        (
            '{"format": "vit_dist.shards/1", "classes": [], "splits": []}',
            "splits must be an object, found a list",
        ),
        (
            '{"format": "vit_dist.shards/1", "classes": [], "splits": {"train": "x"}}',
            "splits.train must be an object",
        ),
        (
            '{"format": "vit_dist.shards/1", "classes": 10, "splits": {}}',
            "classes must be a list of strings, found 10",
        ),
        ("[" * 200_000, "nested deeper than 64 levels"),
        (
            '{"format": "vit_dist.shards/1", "classes": [], "classes": [], "splits": {}}',
            "key 'classes' appears twice",
        ),
        (
            '{"format": "vit_dist.shards/1", "classes": ["a"], "splits": {"train": {"shards": '
            '[{"name": "a.tar", "num_samples": ' + "1" + "0" * 100 + "}]}}}",
            "which is more than the 1,099,511,627,776 samples a shard may hold",
        ),
        (
            '{"format": "vit_dist.shards/1", "classes": ["a"], "splits": {"train": {"shards": [{"name": 3}]}}}',
            "splits.train.shards[0].name must be a string",
        ),
    ],
)
def test_a_malformed_dataset_json_is_one_data_error_naming_the_file(tmp_path, text, expected):
    from vit_dist.data.meta import read_meta

    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(DataError) as e:
        read_meta(tmp_path)
    line = str(e.value)
    assert "dataset.json" in line and expected in line and "\n" not in line and len(line) < 400, line


def test_a_utf16_dataset_json_names_the_file(tmp_path):
    from vit_dist.data.meta import read_meta

    (tmp_path / "dataset.json").write_bytes(json.dumps({"classes": []}).encode("utf-16"))
    with pytest.raises(DataError, match=r"dataset.json is not UTF-8 text"):
        read_meta(tmp_path)


def _checkpoint(tmp_path, **meta):
    """A checkpoint directory whose meta.json has a valid checksum over ``meta``."""
    from vit_dist.checkpoint.manifest import file_record, meta_crc

    ckpt = tmp_path / "checkpoints" / "step-00000004"
    ckpt.mkdir(parents=True)
    for name in ("state.pt", "rank-00000.pt"):
        (ckpt / name).write_bytes(b"tensors")
    files = {name: file_record(ckpt / name) for name in ("state.pt", "rank-00000.pt")}
    meta = {"step": 4, "world_size": 1, "fsdp": False, "files": files, **meta}
    meta["meta_crc32"] = meta_crc(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    return ckpt


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"step": None}, "step must be an integer, found None"),
        ({"fsdp": "yes"}, "fsdp must be true or false"),
    ],
)
def test_a_meta_json_with_a_wrong_type_is_a_damaged_checkpoint(tmp_path, meta, expected):
    from vit_dist.checkpoint.store import checkpoint_problem

    problem = checkpoint_problem(_checkpoint(tmp_path, **meta))
    assert problem is not None and expected in problem


def test_resume_auto_falls_back_past_a_meta_json_nested_100000_deep(tmp_path, caplog):
    from vit_dist.checkpoint.store import _newest_intact, checkpoint_problem

    older = _checkpoint(tmp_path)
    newer = older.with_name("step-00000008")
    newer.mkdir()
    (newer / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "nested deeper than 64 levels" in checkpoint_problem(newer)
    assert checkpoint_problem(older) is None
    assert _newest_intact(tmp_path, full=False) == older  # the damaged newer one is skipped


def _sidecar(tmp_path, **edit):
    """A real export (tiny ViT weights + sidecar) with the sidecar's fields replaced by ``edit``."""
    from vit_dist.checkpoint.weights import write_weights
    from vit_dist.models import create_model

    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 3}
    model = create_model("vit", **kwargs)
    info = {
        "format": "vit_dist.export/1",
        "model_name": "vit",
        "model_kwargs": kwargs,
        "num_classes": 3,
        "classes": ["a", "b", "c"],
        "img_size": 16,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "step": 1,
        "source": str(tmp_path),
    }
    weights = tmp_path / "model.safetensors"
    write_weights(model, weights, info)
    side = json.loads(weights.with_suffix(".json").read_text())
    side.update(edit)
    weights.with_suffix(".json").write_text(json.dumps(side))
    return weights


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"classes": ["a", "b"]}, "classes lists 2 names for num_classes=3"),
        ({"mean": []}, "mean must be a list of 3 finite numbers, found []"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be a list of 3 finite positive numbers"),
        ({"img_size": 0}, "img_size must be an integer in [1, 16384], found 0"),
        ({"crop_pct": 0}, "crop_pct must be a number above 0.0, found 0"),
        ({"crop_pct": 1.5}, "crop_pct must be a number <= 1.0, found 1.5"),
        ({"model_kwargs": "vit"}, "model_kwargs must be an object"),
    ],
)
def test_an_edited_export_sidecar_is_one_checkpoint_error_naming_the_field(tmp_path, edit, expected):
    from vit_dist.checkpoint.weights import load_export

    weights = _sidecar(tmp_path, **edit)
    with pytest.raises(CheckpointError) as e:
        load_export(weights)
    assert "model.json" in str(e.value) and expected in str(e.value), str(e.value)


def test_a_sidecar_architecture_larger_than_its_weights_is_refused_before_allocating(tmp_path):
    from vit_dist.checkpoint.weights import load_export

    weights = _sidecar(tmp_path)
    side = json.loads(weights.with_suffix(".json").read_text())
    side["model_kwargs"].update(embed_dim=65536, num_heads=64)  # 48 GB of parameters if built
    weights.with_suffix(".json").write_text(json.dumps(side))
    start = time.monotonic()
    with pytest.raises(
        CheckpointError, match=r"describes a vit of [\d,]+ parameters, more than model.safetensors has bytes"
    ):
        load_export(weights)
    assert time.monotonic() - start < 10


def test_an_intact_sidecar_still_loads(tmp_path):
    from vit_dist.checkpoint.weights import load_export

    model, info = load_export(_sidecar(tmp_path))
    assert info["classes"] == ["a", "b", "c"] and model.num_classes == 3


def test_class_mismatch_names_what_differs():
    from vit_dist.data.classes import class_mismatch

    names = [str(i) for i in range(10)]
    assert class_mismatch(names, 10, names, 10) is None
    assert class_mismatch(names, 10, None, 10) is None  # no names on one side: the count decides
    assert class_mismatch(names, 10, [*names, "10"], 11) == "11 classes where 10 are expected"
    assert "another order" in class_mismatch(names, 10, names[::-1], 10)
    assert class_mismatch(names, 10, ["zero", *names[1:]], 10) == "class 0 is 'zero' where '0' is expected"
