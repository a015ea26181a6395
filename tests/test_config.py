"""Config loading: YAML + dotted overrides, validation with the key named, every shipped config valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vit_dist.config import ConfigError, dump_config, load_config, parse_overrides
from vit_dist.models.registry import check_model_kwargs

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


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
        (["train.epochs=1", "data.hflip=1.5"], "data.hflip: 1.5 must be <= 1.0"),
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
    header = path.read_text().splitlines()[:12]
    assert any(
        "python -m vit_dist" in line or "accelerate launch" in line or "demo.sh" in line for line in header
    )
    assert any("Expected" in line for line in header), f"{path.name}: header must state the expected result"
