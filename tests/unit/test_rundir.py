"""A run owns its output directory: a new run never changes an earlier run's files, a finished
run resumed reports its result and changes nothing, one job at a time holds the directory (and
a killed job's lock never blocks the next), and an unusable output_dir is one line."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest


def test_a_used_dir_whose_checkpoint_is_set_aside_is_described(tmp_path):
    # A save killed between its two renames leaves only step-N.old: still this run's checkpoint.
    from vit_dist.checkpoint.rundir import existing_run

    aside = tmp_path / "checkpoints" / "step-00000010.old"
    aside.mkdir(parents=True)
    (aside / "meta.json").write_text("{}")
    assert existing_run(tmp_path) == "last checkpoint step 10; checkpoints/"


def test_only_a_resume_of_its_own_run_may_use_a_used_dir(tmp_path):
    """The claim alone (one process): a used directory takes resume=auto or one of its own
    checkpoints and keeps its run id; a new run, or one started from another directory's
    checkpoint, is refused; an empty directory starts a new run with a new id."""
    from vit_dist.checkpoint.rundir import claim_output_dir
    from vit_dist.core.errors import ConfigError
    from vit_dist.runtime.distributed import DistEnv

    single = DistEnv(rank=0, world_size=1, local_rank=0, device="cpu", backend=None)
    used, other = tmp_path / "used", tmp_path / "other"
    (used / "checkpoints" / "step-00000003").mkdir(parents=True)
    (used / "checkpoints" / "step-00000003" / "meta.json").write_text("{}")
    (used / "run.json").write_text(json.dumps({"run_id": "abc", "finished_step": 3}))
    for resume in (None, str(other / "checkpoints" / "step-00000003")):
        with pytest.raises(ConfigError, match="already holds a run \\(last checkpoint step 3; run.json"):
            claim_output_dir(used, single, resume=resume)
    for resume in ("auto", str(used / "checkpoints" / "step-00000003")):
        claim = claim_output_dir(used, single, resume=resume)
        assert (claim.run_id, claim.finished_step, claim.marker_missing) == ("abc", 3, False)
        claim.release()
    fresh = [
        claim_output_dir(other, single, resume="auto"),
        claim_output_dir(tmp_path / "new", single, resume=None),
    ]
    assert all(c.marker_missing and c.finished_step is None for c in fresh)
    assert fresh[0].run_id != fresh[1].run_id
    assert not (other / "run.json").exists()  # written only once the run starts writing


def test_an_elastic_restart_without_resume_is_told_to_add_it(tmp_path, monkeypatch):
    """torchrun restarts ranks with their first command line: without resume=auto each restart
    is refused, and the line says why it keeps coming back."""
    from vit_dist.checkpoint.rundir import claim_output_dir
    from vit_dist.core.errors import ConfigError
    from vit_dist.runtime.distributed import DistEnv

    single = DistEnv(rank=0, world_size=1, local_rank=0, device="cpu", backend=None)
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "abc"}))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    with pytest.raises(ConfigError) as first:
        claim_output_dir(tmp_path, single, resume=None)
    assert "of an elastic launch" not in str(first.value)  # the first attempt: the plain refusal
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    with pytest.raises(ConfigError, match="this is restart 2 of an elastic launch: put resume=auto on"):
        claim_output_dir(tmp_path, single, resume=None)


def test_an_unwritable_output_dir_is_a_config_error(tmp_path):
    """As an unprivileged user (root writes into a chmod 555 directory anyway, so a root test
    process forks and drops to nobody): a directory that cannot be written, and one that cannot
    be created in it. A read-only file system takes the same path (os.access answers EROFS) but
    needs a mount to test."""
    from vit_dist.checkpoint.rundir import claim_output_dir
    from vit_dist.runtime.distributed import DistEnv

    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"rundir-ro-{os.getpid()}"
    locked = base / "locked"
    locked.mkdir(parents=True)
    try:
        base.chmod(0o755)
        locked.chmod(0o555)
        single = DistEnv(rank=0, world_size=1, local_rank=0, device="cpu", backend=None)
        for out in (locked, locked / "run"):
            message = _in_unprivileged_child(lambda out=out: claim_output_dir(out, single, resume=None))
            assert message.startswith(f"ConfigError: output_dir={out}"), message
            assert "not writable" in message or "cannot be created (Permission denied)" in message
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)
        locked.rmdir()
        base.rmdir()


def _in_unprivileged_child(fn) -> str:
    """Run ``fn`` in a forked child (as nobody when this is root); '<Type>: <message>' of what it
    raised, or 'ok'."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                fn()
                text = "ok"
            except Exception as e:
                text = f"{type(e).__name__}: {e}"
            os.write(write_end, text.encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        text = fh.read().decode()
    os.waitpid(pid, 0)
    return text


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """A data-loader worker forked while the trainer holds the lock must not hold it on: after
    the trainer is gone (here: releases it) the next job gets the lock while the child lives."""
    from vit_dist.checkpoint.rundir import DirLock
    from vit_dist.core.errors import ConfigError

    lock = DirLock(tmp_path)
    lock.acquire()
    lock.write_holder()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # at-fork handlers have run once fork returns here
        os.write(ready_w, b"x")
        time.sleep(60)
        os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    try:
        with pytest.raises(ConfigError, match=f"in use by another job \\(pid {os.getpid()} on"):
            DirLock(tmp_path).acquire()
        lock.release()
        again = DirLock(tmp_path)
        again.acquire()  # was: "in use by another job" while the forked child lived
        assert again.locked
        again.release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def _run_dir(path: Path, run_id: str, steps=(3,)) -> Path:
    """A run directory as training leaves it: run.json and checkpoints with meta.json."""
    for step in steps:
        ckpt = path / "checkpoints" / f"step-{step:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "meta.json").write_text(
            json.dumps({"run_id": run_id, "step": step, "world_size": 1, "fsdp": False})
        )
    (path / "run.json").write_text(json.dumps({"run_id": run_id}))
    return path


@pytest.mark.parametrize("where", ["checkpoints/step-00000003/inner", "export/inner", "a/b"])
def test_a_run_inside_another_run_is_refused(tmp_path, where):
    from vit_dist.checkpoint.rundir import claim_output_dir
    from vit_dist.core.errors import ConfigError
    from vit_dist.runtime.distributed import DistEnv

    single = DistEnv(rank=0, world_size=1, local_rank=0, device="cpu", backend=None)
    outer = _run_dir(tmp_path / "outer", "outer")
    with pytest.raises(ConfigError, match=f"lies inside the run directory {outer}: runs never nest"):
        claim_output_dir(outer / where, single, resume="auto")
    assert not (outer / where).exists()  # refused before anything is created


def test_a_run_around_another_run_is_refused(tmp_path):
    from vit_dist.checkpoint.rundir import claim_output_dir
    from vit_dist.core.errors import ConfigError
    from vit_dist.runtime.distributed import DistEnv

    single = DistEnv(rank=0, world_size=1, local_rank=0, device="cpu", backend=None)
    inner = _run_dir(tmp_path / "parent" / "deep" / "inner", "inner")
    with pytest.raises(ConfigError, match=f"holds another run's directory, {inner}: runs never nest"):
        claim_output_dir(tmp_path / "parent", single, resume=None)
    # Its own run, continued, is not "another run" (its checkpoints are below it).
    claim_output_dir(inner, single, resume="auto").release()


def test_pruning_never_deletes_a_run_nested_in_a_checkpoint(tmp_path, caplog):
    # Made by hand (claim_output_dir now refuses it): an older run directory can still hold one.
    import logging

    from vit_dist.checkpoint.store import _prune

    outer = _run_dir(tmp_path / "outer", "outer", steps=(3, 6, 9))
    inner = _run_dir(outer / "checkpoints" / "step-00000003" / "inner", "inner")
    with caplog.at_level(logging.WARNING, logger="vit_dist.checkpoint.store"):
        _prune(outer / "checkpoints", 1, run_id="outer", written=outer / "checkpoints" / "step-00000009")
    assert (inner / "run.json").is_file() and (
        inner / "checkpoints" / "step-00000003" / "meta.json"
    ).is_file()
    assert not (outer / "checkpoints" / "step-00000006").exists()  # the other old one is pruned
    assert any("holds another run's directory" in r.getMessage() for r in caplog.records)
