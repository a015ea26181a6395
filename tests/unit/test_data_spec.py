"""Shard specs: names read from a data directory are files inside it, never commands or URLs."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from support.data_spec import _read_every_shard

from vit_dist.core.errors import EXIT_DATA, KINDS, DataError
from vit_dist.data import tar_reader
from vit_dist.data.spec import resolve_shards
from vit_dist.data.tar_reader import BadSample, read_slice


def _list_shard(directory, name: str) -> None:
    """Make ``directory``'s dataset.json list ``name`` as its first train shard."""
    index = directory / "dataset.json"
    meta = json.loads(index.read_text())
    meta["splits"]["train"]["shards"][0]["name"] = name
    index.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "name",
    [
        "pipe:touch PWNED",
        "pipe:touch PWNED;.tar",
        "file:///etc/passwd",
        "https://example.com/train-000000.tar",
        "/etc/passwd",
        "../outside.tar",
        "sub/../../outside.tar",
        "./train-000000.tar",
        "",
    ],
)
def test_an_index_name_that_is_not_a_plain_file_inside_the_directory_is_refused(
    make_data_shards, tmp_path, monkeypatch, name
):
    shards = make_data_shards([3, 3])
    shutil.copy(shards / "train-000001.tar", tmp_path / "outside.tar")  # a real tar outside the directory
    (shards / "sub").mkdir()
    if name.startswith("pipe:"):
        shutil.copy(shards / "train-000001.tar", shards / name)  # the listed name exists as a file
    _list_shard(shards, name)
    monkeypatch.chdir(shards)  # "." as the spec: the listed name reaches the opener unprefixed
    with pytest.raises(DataError) as refused:
        _read_every_shard(".")
    message = str(refused.value)
    assert "\n" not in message and repr(name) in message
    assert f"which is not a file inside {os.curdir}" in message
    assert not (shards / "PWNED").exists() and not (tmp_path / "PWNED").exists()
    kind, code = next((word, code) for types, word, code in KINDS if isinstance(refused.value, types))
    assert (kind, code) == ("data error", EXIT_DATA)  # the entry points exit 3 with one line


def test_an_index_symlink_leading_outside_the_directory_is_refused_one_inside_is_read(
    make_data_shards, tmp_path
):
    shards = make_data_shards([3, 4])
    shutil.copy(shards / "train-000000.tar", tmp_path / "elsewhere.tar")
    (shards / "out-link.tar").symlink_to(tmp_path / "elsewhere.tar")
    _list_shard(shards, "out-link.tar")
    with pytest.raises(DataError, match=r"'out-link.tar', which is not a file inside .*symlink"):
        resolve_shards(str(shards))

    (shards / "in-link.tar").symlink_to("train-000000.tar")
    _list_shard(shards, "in-link.tar")
    samples = _read_every_shard(str(shards))
    assert len(samples) == 7 and not any(isinstance(s, BadSample) for s in samples)


def test_a_file_named_like_a_command_found_by_a_glob_is_read_as_a_file(
    make_data_shards, tmp_path, monkeypatch
):
    shards = make_data_shards([3, 4])
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(shards / "train-000000.tar", odd / "pipe:touch PWNED;.tar")
    shutil.copy(shards / "train-000001.tar", odd / "-.tar")
    monkeypatch.chdir(odd)
    samples = _read_every_shard("*.tar")
    assert not (odd / "PWNED").exists()
    assert len(samples) == 7 and not any(isinstance(s, BadSample) for s in samples)


def test_a_glob_hit_leading_outside_its_directory_is_refused(make_data_shards, tmp_path):
    shards = make_data_shards([3])
    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "a.tar").symlink_to(shards / "train-000000.tar")
    with pytest.raises(DataError, match=r"'.*a.tar' matched by .* is not a file inside .*farm \(a symlink"):
        resolve_shards(str(farm / "*.tar"))
    (farm / "a.tar").unlink()
    (farm / "dir.tar").mkdir()
    with pytest.raises(DataError, match=r"dir.tar' matched by .*not a regular file"):
        resolve_shards(str(farm / "*.tar"))


def test_local_shards_are_opened_as_files_never_through_gopen(make_data_shards, monkeypatch):
    shards = make_data_shards([3, 4])

    def no_gopen(url, *a, **k):
        raise AssertionError(f"gopen called for local shard {url}")

    monkeypatch.setattr(tar_reader, "gopen", no_gopen)
    monkeypatch.chdir(shards.parent)
    for spec in (shards.name, f"{shards.name}/train-{{000000..000001}}.tar", f"{shards.name}/*.tar"):
        resolved = resolve_shards(spec)
        assert all(os.path.isabs(u) for u in resolved.urls)
        assert len([s for u in resolved.urls for s in read_slice(u)]) == 7
