"""One line and a documented exit code, never a traceback: numbers the config must refuse, OS
errors (disk full, read-only, permissions), and dataset.json counts that do not fit the shards.

The entry points run as real processes here (``python -m vit_dist.train``); ``run_cli`` is also
called directly with functions that raise real ``OSError``s."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest
from helpers import ROOT

from vit_dist.cli.command import run_cli
from vit_dist.core import errors
from vit_dist.core.errors import EXIT_CONFIG, EXIT_OOM, EXIT_OS, EXIT_PEER

# --------------------------------------------------------------------------- numbers in the config


# --------------------------------------------------------------------------- OS errors in run_cli


def _run_cli_line(fn, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.delenv("RANK", raising=False)
    code = run_cli(fn)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return code, lines[0]


def _raise(e: BaseException):
    def fn() -> int:
        raise e

    return fn


def test_disk_full_is_one_line_naming_the_path(capsys, monkeypatch):
    path = "/runs/x/checkpoints/step-00000005/state.pt"
    code, line = _run_cli_line(
        _raise(OSError(errno.ENOSPC, "No space left on device", path)), capsys, monkeypatch
    )
    assert code == EXIT_OS == 8
    assert line.startswith(f"os error: {path}: No space left on device (ENOSPC); free disk space")


def test_a_real_disk_full_write_without_a_path(capsys, monkeypatch):
    def write_to_a_full_disk() -> int:
        with open("/dev/full", "wb", buffering=0) as fh:
            fh.write(b"x")
        return 0

    if not Path("/dev/full").exists():
        pytest.fail("this test needs Linux's /dev/full (writes to it fail with ENOSPC)")
    code, line = _run_cli_line(write_to_a_full_disk, capsys, monkeypatch)
    assert code == EXIT_OS
    assert line.startswith("os error: No space left on device (ENOSPC) (the system did not name the file)")


def test_real_os_errors_name_the_path_and_the_reason(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (lambda: tmp_path.write_text("x"), f"{tmp_path}: Is a directory (EISDIR)"),
        (lambda: (a_file / "x").write_text("x"), f"{a_file / 'x'}: Not a directory (ENOTDIR)"),
        (lambda: a_file.rename(empty), f"{a_file} -> {empty}: Is a directory (EISDIR)"),
    ]
    for fn, start in cases:
        code, line = _run_cli_line(fn, capsys, monkeypatch)
        assert code == EXIT_OS and line.startswith(f"os error: {start}"), line


@pytest.mark.parametrize(
    "error,words",
    [
        (
            OSError(errno.EROFS, "Read-only file system", "/ro/run"),
            "/ro/run: Read-only file system (EROFS); the file",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/root/x"),
            "/root/x: Permission denied (EACCES)",
        ),
        (
            OSError(errno.EDQUOT, "Disk quota exceeded", "/q/x"),
            "/q/x: Disk quota exceeded (EDQUOT); free disk",
        ),
        (OSError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback"), "Caught OSError in"),
    ],
)
def test_os_errors_of_every_kind_are_one_line(error, words, capsys, monkeypatch):
    code, line = _run_cli_line(_raise(error), capsys, monkeypatch)
    assert code == EXIT_OS and line.startswith(f"os error: {words}"), line


def test_the_other_mappings_are_unchanged(capsys, monkeypatch):
    code, line = _run_cli_line(
        _raise(FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope.yaml")),
        capsys,
        monkeypatch,
    )
    assert code == EXIT_CONFIG and line == "file not found: [Errno 2] No such file or directory: '/nope.yaml'"
    code, line = _run_cli_line(_raise(RuntimeError("Connection closed by peer")), capsys, monkeypatch)
    assert code == EXIT_PEER and line.startswith("distributed error: another process of this job stopped")
    code, line = _run_cli_line(_raise(RuntimeError("CUDA out of memory. Tried")), capsys, monkeypatch)
    assert code == EXIT_OOM and line.startswith("out of memory: lower train.batch_size")
    with pytest.raises(KeyError):  # a bug stays a traceback (exit 1)
        run_cli(_raise(KeyError("bug")))


def test_a_value_error_is_a_bug_not_a_config_error(capsys, monkeypatch):
    # Only a vit_dist error type is the user's mistake; a ValueError from torch or our own code
    # is a bug: it propagates (traceback, exit 1) instead of "config error: ..." with exit 2.
    with pytest.raises(ValueError, match="not the user's"):
        run_cli(_raise(ValueError("not the user's")))
    assert capsys.readouterr().err == ""
    code, line = _run_cli_line(_raise(errors.ConfigError("bad key")), capsys, monkeypatch)
    assert code == EXIT_CONFIG and line == "config error: bad key"


def test_a_value_error_inside_the_training_loop_is_a_traceback(
    digits_data_dir, tmp_path, monkeypatch, capsys
):
    # In the loop itself (the second step's loss), through the real entry point in this process.
    from vit_dist import train
    from vit_dist.training import trainer

    calls = []

    def loss_then_bug(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("Expected input batch_size (16) to match target batch_size (8)")
        return real(*args, **kwargs)

    real = trainer.classification_loss
    monkeypatch.setattr(trainer, "classification_loss", loss_then_bug)
    monkeypatch.setenv("WANDB_MODE", "offline")
    words = [
        "--config",
        str(ROOT / "configs" / "digits_vit.yaml"),
        f"data.train={digits_data_dir}",
        "data.val=null",
        "data.workers=0",
        "train.steps=3",
        "logging.wandb=false",
        f"output_dir={tmp_path / 'run'}",
        "model.embed_dim=32",
        "model.depth=1",
        "model.num_heads=2",
    ]
    with pytest.raises(ValueError, match="to match target batch_size"):
        train.main(words)
    assert len(calls) == 2
    assert "config error" not in capsys.readouterr().err


def test_the_cpu_allocator_failing_is_out_of_memory(capsys, monkeypatch):
    # What train.batch_size=10000000 used to end with: a RuntimeError traceback, not the OOM line.
    message = (
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 30720000000 bytes. Error code 12 (Cannot allocate memory)"
    )
    code, line = _run_cli_line(_raise(RuntimeError(message)), capsys, monkeypatch)
    assert code == EXIT_OOM and line.startswith("out of memory: lower train.batch_size")


def test_the_readme_lists_every_exit_code():
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^- Exit codes:(.*?)(?=^\S|^- |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '- Exit codes:' item"
    listed = {int(n) for n in re.findall(r"\b(\d+) [a-z]", " ".join(match.group(1).split()))}
    assert codes | {0, 1} <= listed, f"README.md's exit codes lack {sorted(codes - listed)}"
    kinds = {code for _, _, code in errors.KINDS}
    assert kinds <= codes  # every kind's code is a named constant


# --------------------------------------------------------------------------- dataset.json counts


def test_check_index_counts_names_the_index_split_and_shard(tmp_path):
    from vit_dist.core.errors import DataError
    from vit_dist.data.counts import check_index_counts

    def index(count) -> dict:
        shards = [
            {"name": "train-000000.tar", "num_samples": 3},
            {"name": "train-000001.tar", "num_samples": count},
        ]
        return {"splits": {"train": {"shards": shards}}}

    for count in (0, 7):
        check_index_counts(index(count), tmp_path / "dataset.json")
    for count, problem in (
        (-5, "negative"),
        (2.5, "not a whole number"),
        ("abc", "not a whole number"),
        (True, "not a whole number"),
        (None, "not a whole number"),
    ):
        with pytest.raises(DataError) as e:
            check_index_counts(index(count), tmp_path / "dataset.json")
        message = str(e.value)
        assert message.startswith(f"{tmp_path / 'dataset.json'} (split 'train'): shard 'train-000001.tar' ")
        assert f"num_samples={count!r}, which is {problem}" in message and "\n" not in message
    no_count = {"splits": {"val": {"shards": [{"name": "val-000000.tar"}]}}}
    with pytest.raises(DataError, match="shard 'val-000000.tar' of split 'val' has no num_samples"):
        check_index_counts(no_count, "dataset.json")


def test_the_plan_refuses_bad_sizes_whatever_their_source():
    from vit_dist.core.errors import DataError
    from vit_dist.data.plan import exact_plan, resampled_shards

    for sizes in ([10, -5, 10], [10, 2.5, 10]):
        with pytest.raises(DataError, match=r"shard 1 of the spec .* sample count of "):
            exact_plan(
                sizes, seed=0, epoch=0, rank=0, world_size=1, num_workers=1, batch_size=4, shuffle=True
            )
        with pytest.raises(DataError, match=r"shard 1 of the spec"):
            next(resampled_shards(3, 0, 0, 0, 0, sizes))


def test_note_uncounted_warns_once_per_shard_and_counts(caplog, monkeypatch):
    from vit_dist.data import counts

    monkeypatch.setattr(counts, "_uncounted", {})
    with caplog.at_level("WARNING", logger="vit_dist.data"):
        assert counts.note_uncounted("/d/train-000000.tar", 150) is True
        assert counts.note_uncounted("/d/train-000000.tar", 150) is False
        assert counts.note_uncounted("/d/train-000001.tar", 10) is True
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "/d/train-000000.tar holds more samples than the 150" in messages[0]
    assert "(shards with too small a count in this process: 2)" in messages[1]
    assert counts.uncounted_shards() == {"/d/train-000000.tar": 150, "/d/train-000001.tar": 10}


def test_exit_process_freezes_the_heap_then_exits_with_the_code(monkeypatch):
    # The interpreter's final collection then skips torch's objects (a faster exit of every
    # launch); the code still reaches the shell.
    import gc

    from vit_dist.cli.command import exit_process

    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    with pytest.raises(SystemExit) as e:
        exit_process(3)
    assert e.value.code == 3 and calls == ["freeze"]


def test_under_torchrun_the_launchers_summary_shows_our_line_or_the_bugs_traceback(
    tmp_path, monkeypatch, capsys
):
    """The error file torch elastic's agent names (TORCHELASTIC_ERROR_FILE), read back by torch's
    own ProcessFailure / ChildFailedError as the launcher does."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from vit_dist.core.errors import ConfigError

    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))

    def mistake():
        raise ConfigError("train.steps: expected a positive integer")

    assert run_cli(mistake) == 2
    capsys.readouterr()
    failure = ProcessFailure(local_rank=0, pid=123, exitcode=2, error_file=str(path))
    summary = ChildFailedError("vit_dist.train", {0: failure}).format_msg()
    assert "config error: train.steps: expected a positive integer" in summary, summary
    assert "To enable traceback see" not in summary

    def bug():
        raise ValueError("a bug deep inside")

    with pytest.raises(ValueError):
        run_cli(bug)
    failure = ProcessFailure(local_rank=0, pid=123, exitcode=1, error_file=str(path))
    summary = ChildFailedError("vit_dist.train", {0: failure}).format_msg()
    assert "Traceback (most recent call last)" in summary and "ValueError: a bug deep inside" in summary
