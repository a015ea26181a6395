"""A preemption notice at any moment after start-up stops the job with preempted.json (exit 75),
also during data set-up, before the training loop has started: a requeue script must requeue."""

from __future__ import annotations

import json
import os
import signal

import pytest
from helpers import CONFIG
from support.train import TINY

from vit_dist.core import notices
from vit_dist.core.errors import Preempted


@pytest.fixture
def listening():
    """The train command's notice handlers, in this process; restored afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in notices.SIGNALS}
    notices.forget()
    notices.listen()
    yield
    notices.forget()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _config(data, out, *extra):
    from vit_dist.core.config import load_config

    return load_config(
        CONFIG,
        [
            f"data.train={data}",
            "data.val=null",
            "data.workers=0",
            "logging.wandb=false",
            f"output_dir={out}",
            *TINY[:-1],
            *extra,
        ],
    )


def _signal_during_data_set_up(monkeypatch, sig):
    from vit_dist.training.trainer import Trainer

    build = Trainer._build_data

    def build_then_signal(self):
        build(self)
        os.kill(os.getpid(), sig)  # delivered here, in the middle of the set-up

    monkeypatch.setattr(Trainer, "_build_data", build_then_signal)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_notice_during_data_set_up_writes_preempted_json_without_a_checkpoint(
    digits_data_dir, tmp_path, monkeypatch, listening, sig
):
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    _signal_during_data_set_up(monkeypatch, sig)
    with pytest.raises(Preempted) as e:
        Trainer(_config(digits_data_dir, tmp_path, "train.steps=2"), init_distributed())
    assert str(e.value) == (
        f"preemption signal ({sig.name}) during set-up, before the first step: nothing trained; "
        "no checkpoint yet; resume with resume=auto"
    )
    marker = json.loads((tmp_path / "preempted.json").read_text())
    assert marker == {"step": None, "checkpoint": None, "signal": sig.name}


def test_a_notice_during_a_resumed_set_up_names_the_checkpoint_to_resume(
    digits_data_dir, tmp_path, monkeypatch, listening
):
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    Trainer(_config(digits_data_dir, tmp_path, "train.steps=2"), init_distributed()).fit()
    _signal_during_data_set_up(monkeypatch, signal.SIGTERM)
    with pytest.raises(Preempted, match=r"the newest checkpoint is .*step-00000002; resume with resume=auto"):
        Trainer(_config(digits_data_dir, tmp_path, "train.steps=4", "resume=auto"), init_distributed())
    marker = json.loads((tmp_path / "preempted.json").read_text())
    assert marker["step"] == 2 and marker["checkpoint"].endswith("checkpoints/step-00000002")
    # The directory is free again, and the run resumes and finishes.
    monkeypatch.undo()
    notices.forget()
    Trainer(_config(digits_data_dir, tmp_path, "train.steps=4", "resume=auto"), init_distributed()).fit()
    assert (tmp_path / "checkpoints" / "step-00000004").is_dir()
    assert not (tmp_path / "preempted.json").exists()


def test_a_notice_before_the_claim_is_acted_on_at_the_claim(digits_data_dir, tmp_path, listening):
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    os.kill(os.getpid(), signal.SIGTERM)  # recorded only: the directory is not this job's yet
    with pytest.raises(
        Preempted, match=r"^preemption signal \(SIGTERM\) during set-up, before the first step"
    ):
        Trainer(_config(digits_data_dir, tmp_path, "train.steps=2"), init_distributed())
    assert json.loads((tmp_path / "preempted.json").read_text())["signal"] == "SIGTERM"
