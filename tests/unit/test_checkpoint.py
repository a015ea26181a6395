"""Never lose a checkpoint, never die on a damaged one: the manifest in meta.json and what it
catches, resume=auto falling back past a damaged checkpoint, resume=PATH / evaluate refusing one
(exit 4, one line), pickles with code refused, disk-full saves, same-step saves killed between
their renames, pruning and best/ kept to their own run lineage, stray ``step-*`` folders.

Most tests save tiny models in this process (no training); two run the real commands."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from support.checkpoint import _reseal, _RunsCode, _truncate, file_size_limit
from torch import nn

from vit_dist.checkpoint import manifest
from vit_dist.checkpoint import store as ck
from vit_dist.checkpoint.weights import load_weights
from vit_dist.core import atomic
from vit_dist.core.errors import CheckpointError
from vit_dist.runtime.distributed import DistEnv

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def _model(width: int = 8) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.Linear(width, 3))
    optim = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, width)).sum().backward()
    optim.step()
    return model, optim


class _Position:
    """A stand-in for a training-state component (train_state.Stateful)."""

    def __init__(self, pos: int):
        self.pos = pos

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def _tensors(model, optim, *, fsdp=False) -> ck.TensorState:
    return ck.TensorState(model=model, optimizer=optim, ema=None, fsdp=fsdp)


def _save(out, step, *, run_id="run-a", keep=10, best=False, model=None, env=ENV, fsdp=False):
    if model is None:
        model, optim = _model()
    else:
        model, optim = model
    return ck.save_checkpoint(
        out,
        env,
        step=step,
        tensors=_tensors(model, optim, fsdp=fsdp),
        meta={"run_id": run_id} if run_id is not None else {},
        state={"train": _Position(step)},
        rank_state={"data": _Position(step)},
        keep=keep,
        best=best,
    )


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- the manifest


def test_manifest_lists_every_file_with_its_size_and_the_checkpoint_verifies(tmp_path):
    ckpt = _save(tmp_path, 3)
    meta = ck.read_meta(ckpt)
    files = meta["files"]
    assert sorted(files) == ["rank-00000.pt", "state.pt"]
    for name, record in files.items():
        assert record["size"] == (ckpt / name).stat().st_size
        assert len(record["crc32"]) == 8 and len(record["sample_crc32"]) == 8
    assert meta["meta_crc32"] == manifest.meta_crc(meta)
    assert ck.verify_checkpoint(ckpt)["step"] == 3
    assert ck.verify_checkpoint(ckpt, full=True)["run_id"] == "run-a"


def _zero_tail(path: Path) -> None:
    """Same size, the last 100 KiB zeros: a power loss after the size was recorded."""
    data = bytearray(path.read_bytes())
    data[-100_000:] = bytes(100_000)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda c: _truncate(c / "state.pt"), "state.pt is"),
        (lambda c: _zero_tail(c / "state.pt"), "state.pt does not match its checksum"),
        (lambda c: _flip_byte(c / "state.pt", 10), "state.pt does not match its checksum"),  # the head
        (lambda c: _flip_byte(c / "rank-00000.pt", 700), "rank-00000.pt does not match its checksum"),
        (lambda c: (c / "rank-00000.pt").unlink(), "rank-00000.pt is missing"),
        (lambda c: (c / "state.pt").write_bytes(b""), "state.pt is 0 bytes"),
        (
            lambda c: (c / "meta.json").write_text(
                (c / "meta.json").read_text().replace('"step": 4', '"step": 5')
            ),
            "meta.json does not match its checksum",
        ),
        (lambda c: (c / "meta.json").write_text("{ not json"), "meta.json: invalid JSON"),
    ],
    ids=[
        "truncated",
        "zero-filled-tail",
        "flipped-head",
        "flipped-small",
        "missing",
        "empty",
        "meta",
        "meta-json",
    ],
)
def test_damage_is_detected_by_the_default_check(tmp_path, damage, expected):
    # A 1024-wide layer: state.pt (weights + AdamW moments) is ~12 MiB, a file the default
    # check samples rather than reads whole.
    ckpt = _save(tmp_path, 4, model=_model(1024))
    assert (ckpt / "state.pt").stat().st_size > 4 * manifest._SAMPLE_BLOCK * manifest._SAMPLE_BLOCKS
    damage(ckpt)
    with pytest.raises(CheckpointError, match="is damaged: ") as e:
        ck.verify_checkpoint(ckpt)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_a_flipped_byte_inside_a_large_file_takes_the_full_check(tmp_path):
    """The documented trade-off: the default check samples large files; full=True reads all."""
    ckpt = _save(tmp_path, 4, model=_model(1024))
    size = (ckpt / "state.pt").stat().st_size
    sampled = manifest._sample_ranges(size)
    # A byte between the first two sampled blocks.
    _flip_byte(ckpt / "state.pt", sampled[0][1] + (sampled[1][0] - sampled[0][1]) // 2)
    assert ck.checkpoint_problem(ckpt) is None
    assert "state.pt does not match its checksum" in ck.checkpoint_problem(ckpt, full=True)


def test_a_checkpoint_without_a_manifest_is_not_trusted(tmp_path):
    ckpt = _save(tmp_path, 2)
    meta = ck.read_meta(ckpt)
    del meta["files"]
    meta["meta_crc32"] = manifest.meta_crc(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert "no manifest" in ck.checkpoint_problem(ckpt)


# ---------------------------------------------------------------- resume and load


def test_resume_auto_falls_back_to_the_newest_intact_with_one_warning(tmp_path, caplog):
    first, second = _save(tmp_path, 5), _save(tmp_path, 10)
    _truncate(second / "state.pt")
    with caplog.at_level(logging.WARNING, logger="vit_dist.checkpoint.store"):
        assert ck.resolve_resume("auto", tmp_path, ENV) == first
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(second) in warnings[0] and str(first) in warnings[0]

    with pytest.raises(CheckpointError, match=r"resume=.*step-00000010 is damaged: state.pt is"):
        ck.resolve_resume(str(second), tmp_path, ENV)
    # The loaders refuse it too (evaluate / export / predict / a teacher go through load_weights).
    with pytest.raises(CheckpointError, match="step-00000010 is damaged"):
        load_weights(_model()[0], second)
    # A run directory means its latest: evaluating an older step instead would be a silent
    # surprise, so it is refused too (the message names the damaged one).
    with pytest.raises(CheckpointError, match="step-00000010 is damaged"):
        load_weights(_model()[0], tmp_path)
    assert "step 5" in load_weights(_model()[0], first)


def test_resume_auto_with_every_checkpoint_damaged_stops(tmp_path):
    (_save(tmp_path, 5) / "rank-00000.pt").unlink()
    with pytest.raises(CheckpointError, match="resume=auto: no intact checkpoint"):
        ck.resolve_resume("auto", tmp_path, ENV)
    assert ck.resolve_resume("auto", tmp_path / "fresh", ENV) is None  # none at all: a new run


def test_a_pickle_with_code_is_refused_and_runs_nothing(tmp_path):
    ckpt = _save(tmp_path, 2)
    marker = tmp_path / "ran"
    torch.save({"model": _RunsCode(marker), "optim": {}}, ckpt / "state.pt")
    _reseal(ckpt, "state.pt")  # so that only torch.load(weights_only=True) stands in the way
    assert ck.checkpoint_problem(ckpt) is None
    model, optim = _model()
    with pytest.raises(CheckpointError, match="cannot be loaded .*never runs code"):
        ck.load_checkpoint(ckpt, ENV, _tensors(model, optim))
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_weights(model, ckpt)
    assert not marker.exists()


def test_a_missing_checkpoint_path_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_weights(_model()[0], tmp_path / "no" / "such" / "path")


# ---------------------------------------------------------------- saving


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("phase", ["state", "meta", "mkdir"])
def test_an_os_error_during_a_save_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch, code, phase):
    previous = _save(tmp_path, 5)
    failure = OSError(code, os.strerror(code))

    def fail(*args, **kwargs):
        raise failure

    if phase == "state":
        monkeypatch.setattr(ck, "_write_torch", fail)
    elif phase == "meta":
        monkeypatch.setattr(atomic, "write_json", fail)
    else:
        monkeypatch.setattr(ck, "_fresh_dir", fail)
    with pytest.raises(CheckpointError) as e:
        _save(tmp_path, 10)
    message = str(e.value)
    assert "\n" not in message
    assert "could not write checkpoint" in message and "step-00000010.tmp" in message
    assert os.strerror(code) in message and errno.errorcode[code] in message
    assert f"the previous checkpoint {previous} is intact" in message
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000005"]  # .tmp removed
    ck.verify_checkpoint(previous, full=True)
    assert ck.resolve_resume("auto", tmp_path, ENV) == previous
    model, optim = _model()
    meta, rank_state = ck.load_checkpoint(previous, ENV, _tensors(model, optim))
    assert meta["step"] == 5 and meta["state"] == {"train": {"pos": 5}} and rank_state == {"data": {"pos": 5}}


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no except/finally clean-up of ours."""


def test_saving_a_step_again_never_leaves_it_missing(tmp_path, monkeypatch):
    old = _save(tmp_path, 3, model=_model(8))
    old_crc = ck.read_meta(old)["files"]["state.pt"]["crc32"]
    real_replace = os.replace

    def killed_before_the_new_one_is_renamed_in(src, dst):
        if Path(src).name == "step-00000003.tmp":
            raise _Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_the_new_one_is_renamed_in)
    with pytest.raises(_Killed):
        _save(tmp_path, 3, model=_model(16))
    monkeypatch.undo()
    # Between the two renames: the old copy sits aside, found as step 3.
    assert not old.exists() and (tmp_path / "checkpoints" / "step-00000003.old").is_dir()
    found = ck.list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step-00000003.old"]
    assert ck.resolve_resume("auto", tmp_path, ENV) == found[0]
    assert ck.verify_checkpoint(found[0])["files"]["state.pt"]["crc32"] == old_crc
    assert ck.resolve_checkpoint_dir(old) == found[0]

    new = _save(tmp_path, 3, model=_model(16))  # the next save puts things right
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000003"]
    assert ck.read_meta(new)["files"]["state.pt"]["crc32"] != old_crc
    ck.verify_checkpoint(new, full=True)


def test_stray_step_folders_are_not_checkpoints(tmp_path):
    _save(tmp_path, 2)
    root = tmp_path / "checkpoints"
    (root / "step-final").mkdir()
    (root / "step-final" / "meta.json").write_text("{}")
    (root / "step-abc.tmp").mkdir()
    (root / "step-").mkdir()
    (root / "step-00000007.old.bak").mkdir()
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000002"]
    assert ck.latest_checkpoint(tmp_path).name == "step-00000002"
    assert ck.resolve_resume("auto", tmp_path, ENV).name == "step-00000002"
    assert ck.resolve_checkpoint_dir(tmp_path).name == "step-00000002"
    _save(tmp_path, 4, keep=1)
    assert (root / "step-final").is_dir() and not (root / "step-00000002").exists()


def test_pruning_keeps_to_its_own_run_and_never_the_one_just_written(tmp_path):
    _save(tmp_path, 1, run_id="other")
    _save(tmp_path, 2, run_id=None)  # records no run: never pruned
    for step in (3, 4, 5):
        _save(tmp_path, step, keep=2)

    def names():
        return [p.name for p in ck.list_checkpoints(tmp_path)]

    assert names() == ["step-00000001", "step-00000002", "step-00000004", "step-00000005"]
    # Resumed from step 3 (say): the step-4 save is older than step 5 but is the one just written.
    written = _save(tmp_path, 4, keep=1)
    assert written.is_dir() and "step-00000004" in names()
    assert names() == ["step-00000001", "step-00000002", "step-00000004", "step-00000005"]
    _save(tmp_path, 6, keep=1)
    assert names() == ["step-00000001", "step-00000002", "step-00000006"]


def test_best_is_replaced_only_by_its_own_run(tmp_path, caplog):
    _save(tmp_path, 1, run_id="run-a", best=True)
    best = tmp_path / "checkpoints" / "best"
    assert ck.verify_checkpoint(best, full=True)["run_id"] == "run-a"
    _save(tmp_path, 2, run_id="run-a", best=True)
    assert ck.read_meta(best)["step"] == 2
    assert not list((tmp_path / "checkpoints").glob("best.*"))
    with caplog.at_level(logging.WARNING, logger="vit_dist.checkpoint.store"):
        _save(tmp_path, 3, run_id="run-b", best=True)
    assert ck.read_meta(best)["step"] == 2 and "another run (run_id run-a)" in caplog.text


# ---------------------------------------------------------------- FSDP: dcp/ files


def _fsdp_model(width: int = 64):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.Linear(width, 3))
    fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    optim = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, width)).sum().backward()
    optim.step()
    return model, optim


def test_fsdp_dcp_files_are_in_the_manifest_and_a_damaged_shard_is_caught(tmp_path, group_of_one):
    ckpt = _save(tmp_path, 2, model=_fsdp_model(), env=group_of_one, fsdp=True)
    files = ck.read_meta(ckpt)["files"]
    on_disk = sorted(f"dcp/{p.name}" for p in (ckpt / "dcp").iterdir())
    assert "dcp/.metadata" in on_disk and any(n.endswith(".distcp") for n in on_disk)
    assert sorted(n for n in files if n.startswith("dcp/")) == on_disk
    assert all(files[n]["size"] == (ckpt / n).stat().st_size for n in on_disk)
    ck.verify_checkpoint(ckpt, full=True)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 3))
    assert "step 2" in load_weights(model, ckpt)  # intact: loads in one process

    shard = next(ckpt / n for n in on_disk if n.endswith(".distcp"))
    _flip_byte(shard, shard.stat().st_size - 1)
    assert f"{shard.relative_to(ckpt)} does not match its checksum" in ck.checkpoint_problem(ckpt)
    with pytest.raises(CheckpointError, match="is damaged"):
        load_weights(model, ckpt)
    shard.write_bytes(b"")
    assert f"{shard.relative_to(ckpt)} is 0 bytes" in ck.checkpoint_problem(ckpt)


def test_fsdp_disk_full_in_dcp_save_is_one_line(tmp_path, group_of_one, monkeypatch):
    import torch.distributed.checkpoint.filesystem as dcp_fs

    previous = _save(tmp_path, 2, model=_fsdp_model(), env=group_of_one, fsdp=True)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dcp_fs, "_write_item", disk_full)
    with pytest.raises(CheckpointError) as e:
        _save(tmp_path, 4, model=_fsdp_model(), env=group_of_one, fsdp=True)
    assert "\n" not in str(e.value) and "No space left on device [ENOSPC]" in str(e.value)
    assert f"the previous checkpoint {previous} is intact" in str(e.value)
    assert not (tmp_path / "checkpoints" / "step-00000004.tmp").exists()


# ---------------------------------------------------------------- the commands


def test_a_write_failure_inside_torch_save_is_one_line_and_keeps_the_previous(tmp_path):
    # torch's zip writer turns the OSError of its own write into "RuntimeError: [enforce fail at
    # inline_container.cc] unexpected pos" (a full disk, reported as a bug); the save must give
    # the OS reason, remove its .tmp and leave the previous checkpoint as it was.
    previous = _save(tmp_path, 5)
    big = _model(width=256)
    with file_size_limit(64 * 1024), pytest.raises(CheckpointError) as e:
        _save(tmp_path, 10, model=big)
    message = str(e.value)
    assert "\n" not in message and "File too large [EFBIG]" in message and "step-00000010.tmp" in message
    assert f"the previous checkpoint {previous} is intact" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000005"]
    ck.verify_checkpoint(previous, full=True)


def test_a_write_failure_inside_an_export_is_one_line_and_keeps_the_previous_export(tmp_path):
    from vit_dist.checkpoint.weights import write_weights
    from vit_dist.models import create_model

    kwargs = {"img_size": 16, "patch_size": 4, "depth": 1, "num_heads": 2, "num_classes": 3}
    out = tmp_path / "export" / "model.safetensors"
    write_weights(create_model("vit", embed_dim=32, **kwargs), out, {"model_name": "vit", "step": 1})
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    with file_size_limit(32 * 1024), pytest.raises(CheckpointError) as e:
        write_weights(create_model("vit", embed_dim=128, **kwargs), out, {"model_name": "vit", "step": 2})
    assert str(e.value) == (
        f"could not write {out}: File too large [EFBIG]: {out.parent / '.model.safetensors.tmp-'}"
        f"{os.getpid()}; the previous export {out} is intact"
    )
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before  # both files, no temp left
