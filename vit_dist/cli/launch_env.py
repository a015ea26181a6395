"""accelerate launch's own flags, honoured as the config keys that do the same thing.

``accelerate launch`` (and an accelerate config file) hands its settings to the processes as
environment variables (accelerate 1.x, ``accelerate/utils/launch.py``). vit_dist does its own
mixed precision, FSDP2 and compile (it never calls ``accelerator.prepare``), so without this
module ``accelerate launch --mixed_precision bf16`` would train in fp32 without a word. Mapped:

    --mixed_precision bf16|fp16   ACCELERATE_MIXED_PRECISION=bf16|fp16   precision=bf16|fp16
    --use_fsdp                    ACCELERATE_USE_FSDP=true               parallel.strategy=fsdp
      --fsdp_reshard_after_forward false   FSDP_RESHARD_AFTER_FORWARD    parallel.reshard_after_forward=false
      --fsdp_activation_checkpointing true FSDP_ACTIVATION_CHECKPOINTING parallel.activation_checkpointing=true
    --dynamo_backend inductor     ACCELERATE_DYNAMO_BACKEND=INDUCTOR     parallel.compile=true

accelerate's defaults (``no``, ``NO``, unset, ``true`` for resharding) ask for nothing: the
launcher always sets them. A key the config leaves unset (not in the YAML, not a key=value
override) takes accelerate's value; a key it sets that accelerate asks for differently is a
ConfigError naming both, before any work. What accelerate asks for that vit_dist cannot do
(``fp8``, a dynamo backend other than inductor) is a ConfigError too; settings it does not use
(``--dynamo_mode``, ``--fsdp_offload_params``, ...) are listed for a warning. No torch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core.config import Config, load_config, parse_overrides, read_yaml
from ..core.errors import ConfigError
from ..core.options import FALSE_WORDS, parse_bool

# The keys accelerate can ask for, in the order run_info lists them.
KEYS = (
    "precision",
    "parallel.strategy",
    "parallel.compile",
    "parallel.reshard_after_forward",
    "parallel.activation_checkpointing",
)


@dataclass(frozen=True)
class Request:
    """accelerate asks for ``key=value``; ``flag`` says where that came from."""

    key: str
    value: Any
    flag: str  # e.g. "--mixed_precision bf16 (ACCELERATE_MIXED_PRECISION=bf16)"


def _flag(option: str, var: str, environ: Mapping[str, str]) -> str:
    return f"accelerate {option} ({var}={environ[var]})"


def accelerate_requests(environ: Mapping[str, str]) -> list[Request]:
    """What accelerate's flags ask of the config; ConfigError for what vit_dist cannot do."""
    out: list[Request] = []
    var = "ACCELERATE_MIXED_PRECISION"
    mp = environ.get(var, "").strip().lower()
    if mp in ("bf16", "fp16"):
        out.append(Request("precision", mp, _flag(f"--mixed_precision {mp}", var, environ)))
    elif mp not in ("", "no"):
        raise ConfigError(
            f"accelerate --mixed_precision {mp} ({var}={environ[var]}): vit_dist trains in "
            "fp32, bf16 or fp16 (its precision key); use --mixed_precision bf16|fp16|no"
        )
    var = "ACCELERATE_DYNAMO_BACKEND"
    backend = environ.get(var, "").strip().lower()
    if backend == "inductor":
        out.append(Request("parallel.compile", True, _flag("--dynamo_backend inductor", var, environ)))
    elif backend not in ("", "no"):
        raise ConfigError(
            f"accelerate --dynamo_backend {backend} ({var}={environ[var]}): vit_dist compiles each "
            "block with inductor only (parallel.compile=true); use --dynamo_backend inductor or no"
        )
    var = "ACCELERATE_USE_FSDP"
    if parse_bool(var, environ.get(var, "").strip() or "false"):
        out.append(Request("parallel.strategy", "fsdp", _flag("--use_fsdp", var, environ)))
        var = "FSDP_RESHARD_AFTER_FORWARD"
        # FSDP2 takes true/false; FSDP1's strategy names that keep the weights gathered mean false.
        if environ.get(var, "").strip().lower() in (*FALSE_WORDS, "shard_grad_op", "no_reshard"):
            flag = _flag(f"--fsdp_reshard_after_forward {environ[var]}", var, environ)
            out.append(Request("parallel.reshard_after_forward", False, flag))
        var = "FSDP_ACTIVATION_CHECKPOINTING"
        if parse_bool(var, environ.get(var, "").strip() or "false"):
            flag = _flag("--fsdp_activation_checkpointing true", var, environ)
            out.append(Request("parallel.activation_checkpointing", True, flag))
    return out


# accelerate settings vit_dist does not use, with the values that ask for nothing.
_UNUSED = (
    ("ACCELERATE_DYNAMO_MODE", ("", "default")),
    ("ACCELERATE_DYNAMO_USE_FULLGRAPH", ("", *FALSE_WORDS)),
    ("ACCELERATE_DYNAMO_USE_DYNAMIC", ("", *FALSE_WORDS)),
    ("FSDP_OFFLOAD_PARAMS", ("", *FALSE_WORDS)),
)


def unused_settings(environ: Mapping[str, str]) -> list[str]:
    """``VAR=value`` of each accelerate setting that asks for something vit_dist does not do."""
    return [
        f"{var}={environ[var]}"
        for var, nothing in _UNUSED
        if var in environ and environ[var].strip().lower() not in nothing
    ]


def _given(raw: Mapping, key: str) -> bool:
    """``key`` (dotted) is present in a nested mapping of a YAML file or the overrides."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _typed(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def load_run_config(
    path: str | os.PathLike | None,
    overrides: Iterable[str],
    environ: Mapping[str, str] | None = None,
    keys: Iterable[str] = KEYS,
    *,
    training: bool = True,
) -> tuple[Config, dict[str, str]]:
    """``load_config`` with accelerate's flags (of ``keys``) filled in where the config leaves
    them unset; ConfigError where the config sets one of them differently. Returns the config and,
    for each of ``keys``, where its value came from: ``default``, ``config file``, ``override``
    or accelerate's flag (``accelerate --mixed_precision bf16 (ACCELERATE_MIXED_PRECISION=bf16)``).
    ``training=False`` (evaluate): no run length is required."""
    environ = os.environ if environ is None else environ
    keys, overrides = tuple(keys), list(overrides)
    raw = read_yaml(path) if path else {}
    over = parse_overrides(overrides)
    requests = [r for r in accelerate_requests(environ) if r.key in keys]
    given = {k: "override" if _given(over, k) else "config file" if _given(raw, k) else "" for k in keys}
    extra = [f"{r.key}={_typed(r.value)}" for r in requests if not given[r.key]]
    cfg = load_config(
        path, overrides + extra, training=training
    )  # every value validated before it is compared
    sources = {k: given[k] or "default" for k in keys}
    for r in requests:
        if not given[r.key]:
            sources[r.key] = r.flag
            continue
        value = functools.reduce(getattr, r.key.split("."), cfg)
        if value != r.value:
            where = "on the command line" if given[r.key] == "override" else f"in {path}"
            raise ConfigError(
                f"{r.key}: the config sets {_typed(value)} ({where}) but {r.flag} asks for "
                f"{_typed(r.value)}; make them agree or drop one"
            )
        sources[r.key] = f"{given[r.key]} (and {r.flag})"
    return cfg, sources
