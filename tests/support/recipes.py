"""What tests/unit/test_recipes.py and tests/integration/test_recipes.py share."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from helpers import free_port

from vit_dist.core.config import load_config

ROOT = Path(__file__).resolve().parents[2]


RECIPES = sorted((ROOT / "configs").glob("imagenet_*.yaml"))


NPROC = 2  # ranks of the rehearsal (a recipe declares 8 GPUs: --num_processes 8)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 itself (AVX512-BF16 or AMX). Without it, torch emulates
    bf16 autocast: RegNetY-16GF's forward of 2 images took 42 s instead of 2 s in fp32 on a
    2-core AVX2-only AMD EPYC (torch 2.14.1), so a bf16 recipe rehearsal took 9 minutes."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def header_commands(path: Path) -> list[list[str]]:
    """The shell commands of a config's leading comment block, each as its argv (a trailing
    ``\\`` continues a line; ``# ...`` comments are dropped)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    text = "\n".join(lines).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if not line.strip().startswith(("python ", "accelerate ")):
            continue  # prose (its apostrophes are no shell quotes)
        words = shlex.split(line, comments=True)
        if words[:3] == ["python", "-m", "vit_dist.data.shards"] or words[:2] in (
            ["accelerate", "launch"],
            ["python", "-c"],
        ):
            commands.append(words)
    return commands


def _one(commands: list[list[str]], prefix: list[str], recipe: str) -> list[str]:
    found = [c for c in commands if c[: len(prefix)] == prefix]
    assert len(found) == 1, f"{recipe}: the header needs exactly one `{' '.join(prefix)} ...` line: {found}"
    return found[0]


def _flag(words: list[str], flag: str) -> int:
    assert words.count(flag) == 1, (flag, words)
    return words.index(flag) + 1  # the index of its value


def _launch(header: list[str], paths: dict[str, str], recipe: Path) -> list[str]:
    """The header's ``accelerate launch`` line at NPROC CPU processes with the test's paths; a
    port of this machine's choosing, so that concurrent tests do not meet on the default."""
    argv = [sys.executable, "-m", "accelerate.commands.launch", *header[2:]]
    argv[_flag(argv, "--num_processes")] = str(NPROC)
    argv[_flag(argv, "--config")] = str(ROOT / argv[_flag(argv, "--config")])
    assert Path(argv[_flag(argv, "--config")]) == recipe, f"the header launches another config: {header}"
    module = argv.index("-m", 3)
    argv[module:module] = ["--main_process_port", str(free_port())]
    for i, word in enumerate(argv):
        key, eq, value = word.partition("=")
        if eq and value in paths:
            argv[i] = f"{key}={paths[value]}"
        elif eq and value.startswith("/"):
            raise AssertionError(f"{recipe.name}: the header's {word} is no path the test replaces")
    return argv


def _recipe(recipe: Path):
    """The recipe's config and its header's commands: the shard writer, the launch and, for a
    distilled recipe, the line that saves the teacher's weights (else None)."""
    cfg = load_config(recipe)
    commands = header_commands(recipe)
    shards_cmd = _one(commands, ["python", "-m", "vit_dist.data.shards"], recipe.name)
    launch = _one(commands, ["accelerate", "launch"], recipe.name)
    teacher = _one(commands, ["python", "-c"], recipe.name) if cfg.distill.type != "none" else None
    return cfg, shards_cmd, launch, teacher
