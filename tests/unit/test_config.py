"""Config loading: YAML + dotted overrides, validation with the key named, every shipped config valid."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml

from vit_dist.core.config import MAX_INT, Config, ConfigError, dump_config, load_config, parse_overrides
from vit_dist.models.registry import check_model_kwargs

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["a.b=1", "a.c=1e-3", "d=true", "e=[2,2,6,2]", "f=avg", "g=null"]) == {
        "a": {"b": 1, "c": "1e-3"},  # YAML 1.1 keeps 1e-3 a string; the schema makes it a float
        "d": True,
        "e": [2, 2, 6, 2],
        "f": "avg",
        "g": None,
    }
    cfg = load_config(None, ["train.epochs=3", "optim.lr=1e-3", "model.depths=[2,2]", "model.name=swin"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.model.kwargs == {"depths": [2, 2]} and cfg.model.name == "swin"


def test_yaml_then_overrides_win(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {epochs: 5, batch_size: 8}\noptim: {lr: 0.1}\n")
    cfg = load_config(p, ["train.epochs=7"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == (7, 8, 0.1)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.epochs=1", "optim.lrr=1"], "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
        (["trian.epochs=1"], "unknown config key 'trian'"),
        (
            ["train.epochs=1", "parallel.strategy=zero"],
            "parallel.strategy: 'zero' is not one of 'ddp', 'fsdp'",
        ),
        (["train.epochs=0"], "train.epochs: 0 must be >= 1"),
        (["train.epochs=1", "optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
        (["train.epochs=1", "train.batch_size=2.5"], "train.batch_size: expected an integer"),
        (["train.epochs=1", "augment.hflip=1.5"], "augment.hflip: 1.5 must be <= 1.0"),
        (["train.epochs=1", "data.mode=resampled"], "data.samples_per_epoch is required"),
        (["train.epochs=1", "logging.wandb=maybe"], "logging.wandb: expected true/false"),
        ([], "set train.epochs or train.steps"),
        (["train.epochs"], "is not key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_augmentation_keys_under_data_name_their_own_section(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epochs=1", "data.mixup=0.5"])
    assert str(e.value) == "config key 'data.mixup' is now 'augment.mixup' (augmentation has its own section)"
    p = tmp_path / "old.yaml"
    p.write_text("train: {epochs: 1}\ndata: {img_size: 32, hflip: 0.0}\n")  # a config from before
    with pytest.raises(ConfigError, match=r"'data\.hflip' is now 'augment\.hflip'"):
        load_config(p)
    cfg = load_config(None, ["train.epochs=1", "augment.mixup=0.5"])
    assert cfg.augment.mixup == 0.5
    with pytest.raises(ConfigError, match=r"^augment\.scale: expected 2 numbers"):
        load_config(None, ["train.epochs=1", "augment.scale=[0.5]"])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.steps=10", "model.name=vit", "model.depth=3", "optim.clip_grad=1.0"])
    dump_config(cfg, tmp_path / "config.yaml")
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert raw["model"] == {"name": "vit", "pretrained": None, "depth": 3}
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    cfg = load_config(path)
    check_model_kwargs(cfg.model.name, cfg.model.kwargs)
    lines = path.read_text().splitlines()
    header = lines[: next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))]
    assert any(
        "python -m vit_dist" in line or "accelerate launch" in line or "demo.sh" in line for line in header
    )
    assert any("Expected" in line for line in header), f"{path.name}: header must state the expected result"


# --------------------------------------------------------------------------- finite numbers, bounds


def _schema_keys(want) -> list[tuple[str, object, dict]]:
    """(dotted key, declared type, field metadata) of every schema key whose type ``want`` accepts,
    walked from the dataclasses: a key added later is covered without editing these tests."""

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                yield from walk(tp, f"{prefix}{f.name}.")
            elif f.name != "kwargs" and want(tp):
                yield prefix + f.name, tp, dict(f.metadata)

    return list(walk(Config, ""))


def _parts(tp) -> tuple:
    """The non-null alternatives of a declared type (``float | None`` -> ``(float,)``)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()
    return tuple(a for a in args if a is not type(None)) or (tp,)


def _is_float(tp) -> bool:
    return float in _parts(tp)


def _is_float_list(tp) -> bool:
    return any(typing.get_origin(a) is list and typing.get_args(a) == (float,) for a in _parts(tp))


def _is_int(tp) -> bool:
    return int in _parts(tp)


FLOAT_KEYS = [k for k, _, _ in _schema_keys(_is_float)]
FLOAT_LIST_KEYS = [k for k, _, _ in _schema_keys(_is_float_list)]
INT_KEYS = [(k, m) for k, _, m in _schema_keys(_is_int)]
NON_FINITE = ["nan", ".nan", "inf", ".inf", "-.inf", "-Infinity", "1e400"]


def test_the_schema_walk_finds_the_float_and_list_keys():
    assert {"optim.lr", "data.max_bad_fraction", "optim.clip_grad", "optim.layer_decay"} <= set(FLOAT_KEYS)
    assert {"optim.betas", "augment.scale", "augment.ratio", "data.mean", "data.std"} <= set(FLOAT_LIST_KEYS)
    assert {"distill.teacher_mean", "distill.teacher_std"} <= set(FLOAT_LIST_KEYS)
    assert {"train.batch_size", "train.epochs", "train.steps", "eval.batch_size"} <= {k for k, _ in INT_KEYS}


@pytest.mark.parametrize("bad", NON_FINITE)
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_refuses_nan_and_inf(key, bad):
    # nan compares false with everything: `optim.lr=nan` used to pass `lr > 0` and train to NaN.
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epochs=1", f"{key}={bad}"])
    assert str(e.value).startswith(f"{key}: ") and "not a finite number" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key", FLOAT_LIST_KEYS)
def test_every_float_list_refuses_nan_and_inf_items(key):
    for bad in NON_FINITE:
        with pytest.raises(ConfigError) as e:
            load_config(None, ["train.epochs=1", f"{key}=[0.5, {bad}, 0.5]"])
        assert str(e.value).startswith(f"{key}[1]: ") and "not a finite number" in str(e.value)


def _finite_value(meta: dict) -> float:
    """A value inside the field's declared range."""
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        return (lo + hi) / 2
    return (lo or 0.0) + 0.5


@pytest.mark.parametrize("key,meta", [(k, m) for k, _, m in _schema_keys(_is_float)])
def test_every_float_key_still_accepts_a_finite_value(key, meta):
    value = _finite_value(meta)
    section, name = key.rsplit(".", 1) if "." in key else ("", key)
    cfg = load_config(None, ["train.epochs=1", f"{key}={value!r}", f"{key}={value:.6e}"])
    assert getattr(getattr(cfg, section) if section else cfg, name) == pytest.approx(value)


def test_float_lists_still_accept_finite_values():
    cfg = load_config(
        None,
        [
            "train.epochs=1",
            "optim.betas=[0.9, 0.95]",
            "data.mean=[0.5, 0.5, 0.5]",
            "distill.teacher_std=[1e-1, 2, 3]",
        ],
    )
    assert cfg.optim.betas == [0.9, 0.95] and cfg.distill.teacher_std == [0.1, 2.0, 3.0]


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.drop_path_rate=nan", "model.drop_path_rate"),
        ("model.drop_path_rate=.nan", "model.drop_path_rate"),
        ("model.drop_path_rate=-inf", "model.drop_path_rate"),
        ("model.init_values=1e400", "model.init_values"),
        ("model.depths=[2, .inf]", "model.depths[1]"),
        ("distill.teacher_kwargs={drop_rate: .nan}", "distill.teacher_kwargs.drop_rate"),
    ],
)
def test_free_model_keywords_refuse_nan_and_inf(override, key):
    # They go straight to a constructor, which may not check (drop_path_rate=nan built a model).
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epochs=1", override])
    assert str(e.value).startswith(f"{key}: ") and "not a finite number" in str(e.value)


def test_free_model_keywords_read_yaml11_numbers_as_numbers():
    # YAML 1.1 keeps 1e-3 a string; the model's constructor then failed with a TypeError traceback.
    cfg = load_config(
        None, ["train.epochs=1", "model.drop_path_rate=1e-3", "model.global_pool=avg", "model.depth=3"]
    )
    assert cfg.model.kwargs == {"drop_path_rate": 0.001, "global_pool": "avg", "depth": 3}


@pytest.mark.parametrize("key,meta", INT_KEYS, ids=[k for k, _ in INT_KEYS])
def test_every_int_key_has_an_upper_bound(key, meta):
    bound = meta.get("hi") if meta.get("hi") is not None else MAX_INT
    assert bound <= MAX_INT
    extra = ["data.mode=resampled", "data.samples_per_epoch=10"] if key != "data.samples_per_epoch" else []
    load_config(None, ["train.epochs=1", *extra, f"{key}={bound}"])  # the bound itself is allowed
    for too_big in (bound + 1, 10**30, 10**400):
        with pytest.raises(ConfigError) as e:
            load_config(None, ["train.epochs=1", *extra, f"{key}={too_big}"])
        assert str(e.value).startswith(f"{key}: ") and f"must be <= {bound}" in str(e.value)
        assert len(str(e.value)) < 200  # a 400-digit number is cut, not printed whole


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "train.batch_size=1e7",
            "train.batch_size: expected an integer, got '1e7' (integer keys take digits: write 10000000)",
        ),
        ("train.batch_size=1e20", "train.batch_size: expected an integer, got '1e20'"),
        ("train.batch_size=10000000", "train.batch_size: 10000000 must be <= 1048576"),
        ("train.epochs=1e20", "train.epochs: expected an integer, got '1e20'"),
        (
            "train.steps=1000000000000000000000000000000",
            "train.steps: 1000000000000000000000000000000 must be <= ",
        ),
        ("logging.every=1e9", "logging.every: expected an integer, got '1e9'"),
        ("eval.batch_size=0", "eval.batch_size: 0 must be >= 1"),
        ("eval.batch_size=-5", "eval.batch_size: -5 must be >= 1"),
        ("train.seed=4294967296", "train.seed: 4294967296 must be <= 4294967295"),
        ("optim.clip_grad=.inf", "optim.clip_grad: inf is not a finite number"),
        ("optim.lr=" + "9" * 400, "optim.lr: 999"),
    ],
)
def test_bad_numbers_are_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epochs=1", override])
    assert message in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 200
