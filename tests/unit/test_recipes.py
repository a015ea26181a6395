"""The recipe rehearsals' parts that need no process: every shipped ImageNet recipe's header
commands parse, and the flags they give are the recipe's (the rehearsals themselves:
tests/integration/test_recipes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.recipes import RECIPES, _flag, _launch, _recipe


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


def test_native_bf16_is_read_from_the_cpu_flags():
    from support.recipes import cpu_has_native_bf16

    assert not cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert cpu_has_native_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16("")
