"""train.sync_debug: the guard around a train step (CUDA's sync debug mode is faked on CPU; the
real check runs on a GPU machine in launch/bench_gpu.sh)."""

import pytest
import torch

from vit_dist.core.config import ConfigError, load_config
from vit_dist.training.sync_debug import SyncInStep, sync_guard

CUDA = torch.device("cuda")  # a device object only: nothing runs on it


@pytest.fixture
def fake_mode(monkeypatch):
    """torch.cuda's sync debug mode as a recorded variable."""
    state = {"mode": 0, "calls": []}

    def set_mode(m):
        state["calls"].append(m)
        state["mode"] = m

    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: state["mode"])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", set_mode)
    return state


@pytest.mark.parametrize("mode", ["warn", "error"])
def test_mode_is_on_for_the_step_only(fake_mode, mode):
    with sync_guard(mode, CUDA, step=5):
        assert fake_mode["mode"] == mode
    assert fake_mode["mode"] == 0
    assert fake_mode["calls"] == [mode, 0]


def test_off_and_cpu_touch_nothing(fake_mode):
    with sync_guard("off", CUDA, step=1):
        pass
    with sync_guard("error", torch.device("cpu"), step=1):
        pass
    assert fake_mode["calls"] == []


def _item_in_step():
    raise RuntimeError("called a synchronizing CUDA operation")  # what torch raises in "error" mode


def test_a_sync_names_the_step_and_the_line(fake_mode):
    with pytest.raises(SyncInStep) as info, sync_guard("error", CUDA, step=12):
        _item_in_step()
    msg = str(info.value)
    assert "step 12" in msg and "train.sync_debug=error" in msg
    assert "test_sync_debug.py" in msg and "raise RuntimeError" in msg  # the line that synchronised
    assert fake_mode["mode"] == 0  # restored on the way out


def test_other_errors_pass_unchanged(fake_mode):
    with pytest.raises(RuntimeError, match="CUDA out of memory") as info, sync_guard("error", CUDA, step=3):
        raise RuntimeError("CUDA out of memory")
    assert not isinstance(info.value, SyncInStep)
    assert fake_mode["mode"] == 0


def test_config_names_the_choices():
    assert load_config(None, ["train.steps=1", "train.sync_debug=error"]).train.sync_debug == "error"
    with pytest.raises(ConfigError, match="train.sync_debug"):
        load_config(None, ["train.steps=1", "train.sync_debug=raise"])
