"""One line and a documented exit code, never a traceback: numbers the config must refuse, OS
errors (disk full, read-only, permissions), and dataset.json counts that do not fit the shards.

The entry points run as real processes here (``python -m vit_dist.train``); ``run_cli`` is also
called directly with functions that raise real ``OSError``s."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import run_train

from vit_dist.core.errors import EXIT_CONFIG, EXIT_DATA


def _train(data: Path, out: Path, *overrides: str, timeout: int = 300):
    return run_train(
        [
            "logging.wandb=false",
            "data.workers=0",
            f"data.train={data}",
            f"data.val={data}",
            f"output_dir={out}",
            "train.steps=2",
            *overrides,
        ],
        timeout=timeout,
    )


def _the_error_line(proc, kind: str) -> str:
    """stderr is exactly one line, ``<kind>: ...``, and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{kind}: "), proc.stderr[-3000:]
    return lines[0]


# --------------------------------------------------------------------------- numbers in the config


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.batch_size=1e7", "train.batch_size"),  # YAML 1.1: a string
        ("train.batch_size=1e20", "train.batch_size"),
        ("train.batch_size=10000000", "train.batch_size"),  # an int: was a 30 GB allocation traceback
        ("train.batch_size=100000000000000000000", "train.batch_size"),  # was "Stop argument for islice()"
        ("train.batch_size=-1", "train.batch_size"),
        ("train.epochs=1e20", "train.epochs"),
        ("train.epochs=100000000000000000000", "train.epochs"),
        ("train.steps=1000000000000000000000000000000", "train.steps"),  # was: trained "forever"
        ("logging.every=1e9", "logging.every"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.batch_size=100000000", "eval.batch_size"),
        ("train.seed=18446744073709551616", "train.seed"),
        ("optim.lr=inf", "optim.lr"),  # was: trained, exported NaN weights, exit 0
        ("data.max_bad_fraction=nan", "data.max_bad_fraction"),  # was: the bad-sample limit off
        ("optim.betas=[0.9, .nan]", "optim.betas[1]"),
        ("model.drop_path_rate=nan", "model.drop_path_rate"),  # was a TypeError traceback
    ],
)
def test_bad_numbers_exit_2_with_one_line(digits_data_dir, tmp_path, override, key):
    proc = _train(digits_data_dir, tmp_path / "run", override)
    assert proc.returncode == EXIT_CONFIG, proc.stderr[-3000:]
    assert _the_error_line(proc, "config error").startswith(f"config error: {key}: ")
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize(
    "words,line",
    [
        (["--optim.lrr", "1"], "config error: unknown option '--optim.lrr' (did you mean '--optim.lr'?)"),
        (["--optim.lr", "-1"], "config error: optim.lr: -1.0 must be > 0.0"),  # not taken for a flag
        (
            ["--optim.lr"],
            "config error: --optim.lr needs a value: --optim.lr VALUE, --optim.lr=VALUE or optim.lr=VALUE",
        ),
        (["--train.batch_size=1e7"], "config error: train.batch_size: expected an integer, got '1e7'"),
    ],
)
def test_dashed_keys_are_checked_like_overrides(digits_data_dir, tmp_path, words, line):
    """``--key value`` / ``--key=value`` (argparse's habit) meet the same checks as key=value."""
    proc = _train(digits_data_dir, tmp_path / "run", *words)
    assert proc.returncode == EXIT_CONFIG, proc.stderr[-3000:]
    assert _the_error_line(proc, "config error").startswith(line)
    assert not (tmp_path / "run").exists()


def test_a_yaml11_float_for_a_model_keyword_trains(digits_data_dir, tmp_path):
    # model.drop_path_rate=1e-3 reached the model as the string '1e-3' (a TypeError traceback).
    proc = _train(digits_data_dir, tmp_path / "run", "model.drop_path_rate=1e-3", "train.steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]


# --------------------------------------------------------------------------- OS errors in run_cli


# --------------------------------------------------------------------------- dataset.json counts


@pytest.fixture
def digits_with_count(tmp_path):
    """``make(count) -> dir``: digits shards of 200 samples, the first train shard's count in
    dataset.json replaced by ``count``."""
    from vit_dist.data.writers import write_shards

    def make(count) -> Path:
        out = tmp_path / "shards"
        if out.exists():
            shutil.rmtree(out)
        write_shards("digits", out, img_size=16, shard_samples=200, progress=False)
        index = json.loads((out / "dataset.json").read_text())
        index["splits"]["train"]["shards"][0]["num_samples"] = count
        (out / "dataset.json").write_text(json.dumps(index))
        return out

    return make


@pytest.mark.parametrize(
    "count",
    [
        -5,
        2.5,
        "abc",
    ],
)
def test_a_negative_or_fractional_count_is_a_data_error(digits_with_count, tmp_path, count):
    proc = _train(digits_with_count(count), tmp_path / "run")
    assert proc.returncode == EXIT_DATA, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = _the_error_line(proc, "data error")
    assert repr(count) in line and "dataset.json" in line


def test_a_count_smaller_than_the_shard_is_warned_about(digits_with_count, tmp_path):
    # 200 samples, dataset.json says 150: 50 samples would be silently left out of every epoch.
    data = digits_with_count(150)
    proc = _train(data, tmp_path / "run", "train.epochs=1", "train.steps=null", "train.batch_size=256")
    assert proc.returncode == 0, proc.stderr[-3000:]
    shard = str(data / "train-000000.tar")
    warnings = [
        line for line in (proc.stdout + proc.stderr).splitlines() if "holds more samples than the 150" in line
    ]
    assert len(warnings) == 1 and shard in warnings[0], (proc.stdout + proc.stderr)[-3000:]
