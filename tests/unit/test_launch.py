"""Launch anywhere: the accelerate config files (launch/accelerate/), accelerate's own flags
(--mixed_precision, --use_fsdp, --dynamo_backend: vit_dist.cli.launch_env), two `accelerate launch`
machines on loopback, and slurm/train_cpu.sbatch (-> train.sbatch -> node.sh) on a real 2-node
SLURM cluster started on this machine (tests/slurm_cluster.py): a 2-node run, and preemption
by real scheduler actions (`scancel --signal=USR1`, `scontrol requeue`) that must checkpoint,
requeue and resume to the same final step."""

from __future__ import annotations

import pytest
import yaml
from support.launch import ACCEL, FREE_SMOKE

from vit_dist.cli.launch_env import KEYS, load_run_config, unused_settings
from vit_dist.core.errors import ConfigError

# ---------------------------------------------------------------------------- config files


def test_accelerate_configs_load_and_name_their_command():
    from accelerate.commands.config.config_args import load_config_from_file

    names = {p.name for p in ACCEL.glob("*.yaml")}
    assert names == {"cpu.yaml", "gpu_1.yaml", "gpu_ddp.yaml", "gpu_fsdp.yaml", "multi_node.yaml"}
    for path in sorted(ACCEL.glob("*.yaml")):
        cfg = load_config_from_file(str(path))
        text = path.read_text()
        assert f"--config_file launch/accelerate/{path.name}" in text, path.name  # its command
        assert "-m vit_dist.train --config configs/" in text, path.name
        # Precision and FSDP are vit_dist's keys: accelerate's own must stay off.
        assert cfg.mixed_precision == "no" and cfg.distributed_type.value in ("NO", "MULTI_GPU"), path.name
        raw = yaml.safe_load(text)
        assert raw["num_processes"] >= 1 and raw["num_machines"] >= 1, path.name
    fsdp = (ACCEL / "gpu_fsdp.yaml").read_text()
    assert "parallel.strategy=fsdp" in fsdp and "NOT used" in fsdp


# ---------------------------------------------------------------------------- accelerate, no SLURM


# ---------------------------------------------------------------------------- accelerate's own flags


def _load(tmp_path, environ: dict, overrides=(), cfg: dict | None = None, keys=KEYS):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(FREE_SMOKE if cfg is None else cfg))
    return load_run_config(path, list(overrides), environ, keys)


def test_accelerate_flags_fill_what_the_config_leaves_unset(tmp_path):
    cfg, sources = _load(tmp_path, {})
    assert (cfg.precision, cfg.parallel.strategy, cfg.parallel.compile) == ("fp32", "ddp", False)
    assert set(sources.values()) == {"default"}
    # What `accelerate launch` sets when no flag is given asks for nothing.
    quiet = {
        "ACCELERATE_MIXED_PRECISION": "no",
        "ACCELERATE_DYNAMO_BACKEND": "NO",
        "ACCELERATE_USE_CPU": "True",
    }
    assert _load(tmp_path, quiet)[0] == cfg
    environ = {
        "ACCELERATE_MIXED_PRECISION": "bf16",
        "ACCELERATE_DYNAMO_BACKEND": "INDUCTOR",
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_RESHARD_AFTER_FORWARD": "false",
        "FSDP_ACTIVATION_CHECKPOINTING": "true",
    }
    cfg, sources = _load(tmp_path, environ)
    p = cfg.parallel
    assert (cfg.precision, p.strategy, p.compile, p.reshard_after_forward, p.activation_checkpointing) == (
        "bf16",
        "fsdp",
        True,
        False,
        True,
    )
    assert sources["precision"] == "accelerate --mixed_precision bf16 (ACCELERATE_MIXED_PRECISION=bf16)"
    assert sources["parallel.strategy"] == "accelerate --use_fsdp (ACCELERATE_USE_FSDP=true)"
    assert (
        sources["parallel.compile"]
        == "accelerate --dynamo_backend inductor (ACCELERATE_DYNAMO_BACKEND=INDUCTOR)"
    )
    # The FSDP sub-flags mean nothing without --use_fsdp.
    cfg, _ = _load(tmp_path, {"FSDP_RESHARD_AFTER_FORWARD": "false", "FSDP_ACTIVATION_CHECKPOINTING": "true"})
    assert cfg.parallel.reshard_after_forward and not cfg.parallel.activation_checkpointing
    # evaluate takes precision only.
    cfg, sources = _load(tmp_path, environ, keys=("precision",))
    assert (cfg.precision, cfg.parallel.strategy, list(sources)) == ("bf16", "ddp", ["precision"])


def test_accelerate_flags_against_the_config(tmp_path):
    bf16 = {"ACCELERATE_MIXED_PRECISION": "bf16"}
    # Set in the YAML or as an override and different: one line naming both.
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, bf16, cfg={**FREE_SMOKE, "precision": "fp16"})
    assert str(e.value) == (
        f"precision: the config sets fp16 (in {tmp_path / 'c.yaml'}) but accelerate --mixed_precision bf16 "
        "(ACCELERATE_MIXED_PRECISION=bf16) asks for bf16; make them agree or drop one"
    )
    with pytest.raises(
        ConfigError,
        match=r"parallel.strategy: the config sets ddp \(on the command line\) but accelerate --use_fsdp",
    ):
        _load(tmp_path, {"ACCELERATE_USE_FSDP": "true"}, ["parallel.strategy=ddp"])
    with pytest.raises(
        ConfigError, match=r"parallel.compile: the config sets false .* --dynamo_backend inductor"
    ):
        _load(tmp_path, {"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}, ["parallel.compile=false"])
    # The same value: fine, both named as the source; the override wins over the YAML.
    cfg, sources = _load(tmp_path, bf16, ["precision=bf16"], cfg={**FREE_SMOKE, "precision": "fp32"})
    assert cfg.precision == "bf16" and sources["precision"].startswith(
        "override (and accelerate --mixed_precision"
    )
    # A value the config refuses is reported as such, before any comparison.
    with pytest.raises(ConfigError, match=r"precision: 'fp64' is not one of"):
        _load(tmp_path, bf16, ["precision=fp64"])


@pytest.mark.parametrize(
    "environ,words",
    [
        (
            {"ACCELERATE_MIXED_PRECISION": "fp8"},
            "--mixed_precision fp8 (ACCELERATE_MIXED_PRECISION=fp8): vit_dist trains in fp32, bf16 or fp16",
        ),
        (
            {"ACCELERATE_DYNAMO_BACKEND": "AOT_EAGER"},
            "--dynamo_backend aot_eager (ACCELERATE_DYNAMO_BACKEND=AOT_EAGER): vit_dist compiles each block with inductor only",
        ),
        ({"ACCELERATE_USE_FSDP": "maybe"}, "ACCELERATE_USE_FSDP='maybe': expected true or false"),
    ],
)
def test_what_vit_dist_cannot_do_is_a_config_error(tmp_path, environ, words):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, environ)
    assert words in str(e.value)


def test_unused_accelerate_settings_are_named():
    environ = {
        "ACCELERATE_DYNAMO_MODE": "max-autotune",
        "ACCELERATE_DYNAMO_USE_FULLGRAPH": "False",
        "FSDP_OFFLOAD_PARAMS": "true",
    }
    assert unused_settings(environ) == ["ACCELERATE_DYNAMO_MODE=max-autotune", "FSDP_OFFLOAD_PARAMS=true"]
    assert unused_settings({"ACCELERATE_DYNAMO_MODE": "default", "FSDP_OFFLOAD_PARAMS": "false"}) == []


# ---------------------------------------------------------------------------- a real SLURM cluster
