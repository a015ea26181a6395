"""Every shipped ImageNet recipe (configs/imagenet_*.yaml, globbed: a new one is covered at once)
rehearsed on CPU at its declared topology: the commands of its header comment, run as written,
on a few real photos.

* the shards: the header's ``python -m vit_dist.data.shards`` line, with its paths replaced and
  ``--shard-bytes`` scaled down, on an ImageFolder of real photos at ImageNet-like sizes (random
  crops, flips and resizes to 300-500 px of scikit-learn's two sample photos, 3 classes); both
  splits get fewer shards than the recipe has loader streams (2 ranks x ``data.workers``).
* a distilled recipe's teacher: the header's ``python -c`` line that saves torchvision's weights,
  with ``weights=None`` (random weights, no download) and the test's number of classes.
* the run: the header's ``accelerate launch`` line at 2 CPU processes (gloo) instead of 8 GPUs,
  with the recipe as shipped -- model, ``data.workers``, precision, strategy, compile, EMA,
  mixup / cutmix / RandAugment / random erasing, the teacher -- overriding only the batch size,
  the number of steps and the paths. The full-size models fit the CPU budget (2 steps of
  batch 2 per rank), so no recipe's model is shrunk.

Checked: exit 0, the run's resolved config is the recipe's with only those overrides, its
world size, strategy and precision, the steps it logged, and an eval.json that counts every
validation sample exactly once: num_samples is the split's size, and the loss equals that of a
1-process, 1-stream evaluation (``data.workers=0``: every shard read in order) of the exported
weights.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from helpers import free_port

from vit_dist.config import load_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs").glob("imagenet_*.yaml"))
NPROC = 2  # ranks of the rehearsal (a recipe declares 8 GPUs: --num_processes 8)


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


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_header_commands_fit_together(recipe: Path):
    """Without running them (the quick tier): the writer writes where the launch reads, the
    launch starts this recipe on 8 processes, a teacher is saved where the launch takes it."""
    cfg, shards_cmd, launch, teacher = _recipe(recipe)
    out = shards_cmd[_flag(shards_cmd, "--out")]
    assert cfg.data.train == cfg.data.val == out, f"{recipe.name}: the writer's --out is not data.train/val"
    assert {f"data.train={out}", f"data.val={out}"} <= set(launch), launch
    assert "--multi_gpu" in launch and launch[_flag(launch, "--num_processes")] == "8", launch
    paths = {out: "/rehearsal/shards"}
    if teacher is not None:
        assert f"distill.teacher_weights={cfg.distill.teacher_weights}" in launch, launch
        assert repr(cfg.distill.teacher_weights) in teacher[2], teacher
        paths[cfg.distill.teacher_weights] = "/rehearsal/teacher.pth"
    argv = _launch(launch, paths, recipe)  # every path of the line is one the rehearsal replaces
    assert "data.train=/rehearsal/shards" in argv, argv
