"""What the commands tell about themselves and how they read their words: ``--help`` lists every
config key (computed here from the schema, so a key missing from the listing fails) with its
type, default, range or choices and a line of doc, and each command's own options; argparse's
``--key value`` / ``--key=value`` habit means exactly ``key=value``."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import pytest
from helpers import CONFIG

from vit_dist import evaluate, export, predict, train
from vit_dist.cli.command import parse_args
from vit_dist.core.config import Config, ConfigError, load_config
from vit_dist.core.errors import EXIT_CONFIG


def _schema(cls=Config, prefix: str = "") -> dict[str, tuple[object, dataclasses.Field]]:
    """Every dotted key of the schema -> (its type, its field), read here, not from config_help."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= _schema(hints[f.name], f"{prefix}{f.name}.")
        elif f.name != "kwargs":
            out[prefix + f.name] = (hints[f.name], f)
    return out


def _help(main, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _entries(text: str) -> dict[str, tuple[str, str]]:
    """``key -> (its facts line, its doc line)`` of a rendered key list."""
    lines = text.splitlines()
    out = {}
    for i, line in enumerate(lines):
        if line.startswith("  ") and not line.startswith("   ") and "  (" in line:
            key, facts = line.strip().split("  (", 1)
            doc = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].startswith("      ") else ""
            out[key] = (facts.rstrip(")"), doc)
    return out


def test_train_help_lists_every_key_with_its_type_default_range_and_doc(capsys):
    entries = _entries(_help(train.main, capsys))
    schema = _schema()
    assert len(schema) > 70
    missing = sorted(set(schema) - set(entries))
    assert not missing, f"keys missing from --help: {missing}"
    for key, (tp, f) in schema.items():
        facts, doc = entries[key]
        assert "default " in facts, (key, facts)
        assert doc, f"{key} has no doc line (give its _field a doc=)"
        if typing.get_origin(tp) is Literal:
            assert f"one of {'|'.join(typing.get_args(tp))}" in facts, (key, facts)
        if f.metadata.get("lo") is not None:
            assert ">" in facts or "in [" in facts or "in (" in facts, (key, facts)
    # A few rendered exactly as the schema declares them.
    assert entries["optim.lr"][0] == "float, > 0, default 0.0005"
    assert entries["data.workers"][0] == "int, in [0, 256], default 4"
    assert entries["train.batch_size"][0] == "int, in [1, 2**20], default 64"
    assert entries["data.crop_pct"][0] == "float, in (0, 1], default 0.875"
    assert entries["data.train"][0] == "str or list of str or null, default null"
    assert entries["precision"][0] == "one of fp32|bf16|fp16, default fp32"
    assert entries["parallel.compile"][0] == "bool, default false"
    assert entries["data.mean"][0] == "list of float, default [0.485, 0.456, 0.406]"
    # The free model keywords: how they work.
    assert "model.<kw>" in entries and "constructor" in entries["model.<kw>"][1]


@pytest.mark.parametrize(
    "main,own",
    [
        (evaluate.main, ("checkpoint", "ema")),
        (export.main, ("checkpoint", "out", "ema")),
        (predict.main, ("checkpoint", "topk", "ema")),
    ],
)
def test_evaluate_export_predict_list_their_options(main, own, capsys):
    text = _help(main, capsys)
    entries = _entries(text)
    for name in own:
        assert name in entries and entries[name][1], (name, text)
    assert entries["ema"][0] == "bool, default false"
    if main is evaluate.main:  # the config keys evaluation uses, and no training key
        used = {
            k
            for k in _schema()
            if any(k == u or (u.endswith(".") and k.startswith(u)) for u in evaluate.USED_KEYS)
        }
        assert all(
            any(k == u or k.startswith(u) for k in _schema()) for u in evaluate.USED_KEYS
        )  # none stale
        assert used <= set(entries) and {"data.val", "data.val_class_map", "eval.batch_size"} <= used
        assert not {"optim.lr", "train.epochs", "augment.mixup", "data.train"} & set(entries)
    else:
        assert "optim.lr" not in entries
    if main is predict.main:
        assert entries["topk"][0] == "int, >= 1, default 5" and "IMAGE" in text


def _config(*words: str):
    path, overrides = parse_args("python -m vit_dist.train", ["--config", str(CONFIG), *words])
    return load_config(path, overrides).to_dict()


def test_dashed_forms_give_the_same_config():
    plain = _config("optim.lr=1e-3", "train.steps=7", "model.depth=3")
    assert plain["optim"]["lr"] == 1e-3 and plain["model"]["depth"] == 3
    assert _config("--optim.lr", "1e-3", "--train.steps", "7", "--model.depth", "3") == plain
    assert _config("--optim.lr=1e-3", "--train.steps=7", "--model.depth=3") == plain
    assert _config("train.steps=7", "--optim.lr", "1e-3", "model.depth=3") == plain  # mixed, any order
    # --config may come after the keys.
    path, overrides = parse_args("t", ["--optim.lr", "1e-3", "--config", str(CONFIG), "train.steps=7"])
    assert path == str(CONFIG) and overrides == ["optim.lr=1e-3", "train.steps=7"]


def test_a_bare_bool_key_means_true_and_takes_a_true_false_word():
    assert _config("logging.wandb=false", "--logging.wandb")["logging"]["wandb"] is True
    assert _config("--logging.wandb", "false")["logging"]["wandb"] is False
    cfg = _config("--parallel.compile", "--optim.lr", "2e-3")  # the next option is not its value
    assert cfg["parallel"]["compile"] is True and cfg["optim"]["lr"] == 2e-3
    assert _config("--parallel.compile=no")["parallel"]["compile"] is False


def test_a_negative_number_reaches_validation():
    path, overrides = parse_args("t", ["--config", str(CONFIG), "--optim.lr", "-1"])
    assert overrides == ["optim.lr=-1"]
    with pytest.raises(ConfigError, match=r"optim.lr: -1.0 must be > 0"):
        load_config(path, overrides)
    assert parse_args("t", ["--optim.clip_grad", "-1e-3"])[1] == ["optim.clip_grad=-1e-3"]


@pytest.mark.parametrize(
    "words,line",
    [
        (["--optim.lrr", "1"], "config error: unknown option '--optim.lrr' (did you mean '--optim.lr'?)"),
        (["--confg", "x.yaml"], "config error: unknown option '--confg' (did you mean '--config'?)"),
        (
            ["--optim.lr"],
            "config error: --optim.lr needs a value: --optim.lr VALUE, --optim.lr=VALUE or optim.lr=VALUE",
        ),
        (["--optim.lr", "--train.steps", "3"], "config error: --optim.lr needs a value"),
        (["--optim.lr", "train.steps=3"], "config error: --optim.lr needs a value"),
        (["-x"], "config error: unrecognized arguments: -x (see t --help)"),
    ],
)
def test_dashed_mistakes_are_one_line(words, line, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args("t", words)
    assert e.value.code == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err


def test_command_options_take_the_dashed_form_too():
    _, words = parse_args(
        "p", ["--checkpoint", "run", "a.jpg", "--topk=3", "--ema"], options=predict.OPTIONS, config=False
    )
    assert words == ["checkpoint=run", "a.jpg", "topk=3", "ema=true"]
    _, words = parse_args(
        "e", ["--ema", "false", "--out", "x.safetensors"], options=export.OPTIONS, config=False
    )
    assert words == ["ema=false", "out=x.safetensors"]
    _, words = parse_args("v", ["--checkpoint=run", "--ema", "--optim.lr", "1"], options=evaluate.OPTIONS)
    assert words == ["checkpoint=run", "ema=true", "optim.lr=1"]
    with pytest.raises(SystemExit):  # export has no config keys
        parse_args("e", ["--optim.lr", "1"], options=export.OPTIONS, config=False)
