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
  batch 2 per rank), so no recipe's model is shrunk. On a CPU that emulates bf16 (no
  AVX512-BF16 or AMX: 20x slower than fp32, ``support.recipes.cpu_has_native_bf16``) a bf16
  recipe runs in fp32 (one more override); bf16 autocast itself is tested on small models.

Checked: exit 0, the run's resolved config is the recipe's with only those overrides, its
world size, strategy and precision, the steps it logged, and an eval.json that counts every
validation sample exactly once: num_samples is the split's size, and the loss equals that of a
1-process, 1-stream evaluation (``data.workers=0``: every shard read in order) of the exported
weights.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from helpers import assert_ok, env, read_jsonl, run_process
from support.recipes import NPROC, RECIPES, _flag, _launch, _recipe, cpu_has_native_bf16

from vit_dist.core.config import load_config

STEPS, BATCH = 2, 2  # the only training overrides besides paths: the smallest run that steps twice
CLASSES = {"china": False, "flower": False, "flower_flipped": True}  # class -> photo turned upside down
PHOTOS_PER_CLASS = {"train": 8, "val": 5}  # 24 train, 15 val: odd, not a multiple of any batch
# ImageNet at --resize 320 is roughly 100 KB an image, so --shard-bytes 1e9 puts ~10,000 in a shard
# and its 50,000 val images in ~5 shards for 8 GPUs x 8 workers = 64 streams. The test's photos at
# 320 px are 30-50 KB, so 1e9 / 1e4 puts ~3 in one: 10 train and 6 val shards, fewer than the
# 2 x 8 loader streams of every recipe, as ImageNet's val is at 8 x 8.
SHARD_BYTES_SCALE = 1e4


def _write_photos(root: Path) -> None:
    """An ImageFolder tree root/{train,val}/<class>/*.jpg of real photos at ImageNet-like sizes."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = random.Random(0)
    china, flower = (Image.fromarray(a) for a in load_sample_images().images)  # 640 x 427 each
    sources = {"china": china, "flower": flower}
    for split, n in PHOTOS_PER_CLASS.items():
        for cls, flipped in CLASSES.items():
            src = sources[cls.removesuffix("_flipped")]
            if flipped:
                src = src.transpose(Image.FLIP_TOP_BOTTOM)
            out = root / split / cls
            out.mkdir(parents=True)
            for i in range(n):
                w, h = rng.randint(300, src.width), rng.randint(300, src.height)
                x, y = rng.randint(0, src.width - w), rng.randint(0, src.height - h)
                im = src.crop((x, y, x + w, y + h))
                if rng.random() < 0.5:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
                s = rng.uniform(300, 500) / min(w, h)
                size = tuple(min(500, max(300, round(v * s))) for v in (w, h))
                im.resize(size, Image.BICUBIC).save(out / f"{cls}_{i}.jpg", quality=90)


class Workspace:
    """The module's photos, and each distinct shard set / teacher file, written once."""

    def __init__(self, root: Path):
        self.root = root
        self.photos = root / "photos"
        _write_photos(self.photos)
        self._done: dict[tuple, Path] = {}

    def _run_once(self, header: list[str], out: Path, argv: list[str], what: str) -> Path:
        """Run ``argv`` (the test's form of ``header``) unless the same header command ran already."""
        key = tuple(header)
        if key not in self._done:
            proc = run_process(argv, 300, env=env())
            assert proc.returncode == 0, (
                f"{what}: {shlex.join(argv)}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
            )
            self._done[key] = out
        return self._done[key]

    def shards(self, header: list[str]) -> Path:
        """The header's shard writer on the photos: --from-folder and --out replaced, --shard-bytes
        scaled down, every other flag as written."""
        out = self.root / f"shards{len(self._done)}"
        argv = [sys.executable, *header[1:]]
        argv[_flag(argv, "--from-folder")] = str(self.photos)
        argv[_flag(argv, "--out")] = str(out)
        i = _flag(argv, "--shard-bytes")
        argv[i] = f"{float(argv[i]) / SHARD_BYTES_SCALE:g}"
        return self._run_once(header, out, argv, "the header's shard writer")

    def teacher(self, header: list[str], path_in_header: str) -> Path:
        """The header's ``python -c`` that saves the teacher's weights, with random weights
        (``weights=None``) for the test's classes, written to a file of the test's."""
        out = self.root / f"teacher{len(self._done)}.pth"
        code, n = re.subn(r"weights=(['\"])\w+\1", f"weights=None, num_classes={len(CLASSES)}", header[2])
        assert n == 1, f"the teacher command names no weights='...' to replace: {header[2]}"
        assert code.count(repr(path_in_header)) == 1, (path_in_header, code)
        code = code.replace(repr(path_in_header), repr(str(out)))
        code = code.replace(repr(str(Path(path_in_header).parent)), repr(str(self.root)))  # its makedirs
        argv = [sys.executable, "-c", code, *header[3:]]
        return self._run_once(header, out, argv, "the header's teacher command")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("recipes"))


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_rehearsal_two_cpu_ranks(recipe: Path, workspace: Workspace, tmp_path):
    """The recipe as shipped, at 2 CPU ranks for 2 steps of batch 2, from its header's commands:
    exit 0, nothing changed but batch size, steps and paths, and every validation sample
    evaluated exactly once. No model is shrunk and nothing else is overridden."""
    cfg, shards_cmd, launch, teacher = _recipe(recipe)
    data = workspace.shards(shards_cmd)
    paths = {shards_cmd[_flag(shards_cmd, "--out")]: str(data)}
    if teacher is not None:
        paths[cfg.distill.teacher_weights] = str(workspace.teacher(teacher, cfg.distill.teacher_weights))

    meta = json.loads((data / "dataset.json").read_text())
    streams = NPROC * cfg.data.workers
    for split in ("train", "val"):
        n = len(meta["splits"][split]["shards"])
        assert 2 <= n < streams, f"{split}: {n} shards, the test wants 2 .. {streams - 1} ({streams} streams)"
    val_samples = meta["splits"]["val"]["num_samples"]
    assert val_samples == len(CLASSES) * PHOTOS_PER_CLASS["val"]

    out = tmp_path / "run"
    overrides = [f"train.batch_size={BATCH}", f"train.steps={STEPS}", f"output_dir={out}"]
    precision = cfg.precision if cfg.precision != "bf16" or cpu_has_native_bf16() else "fp32"
    if precision != cfg.precision:
        overrides.append(f"precision={precision}")
    argv = _launch(launch, paths, recipe) + overrides
    proc = run_process(argv, 600, env=env(ACCELERATE_USE_CPU="1"))
    assert_ok(proc)

    # the recipe as shipped: the header's path overrides and the test's three (four), nothing else
    header_overrides = [w for w in argv[argv.index("--config") + 2 :] if "=" in w]
    assert load_config(out / "config.yaml").to_dict() == load_config(recipe, header_overrides).to_dict()
    info = json.loads((out / "run_info.json").read_text())
    assert (info["world_size"], info["strategy"], info["precision"]) == (
        NPROC,
        cfg.parallel.strategy,
        precision,
    ), info
    assert info["num_classes"] == len(CLASSES), info
    metrics = read_jsonl(out / "metrics.jsonl")
    assert metrics and metrics[-1]["step"] == STEPS and {m["world_size"] for m in metrics} == {NPROC}, metrics

    final = json.loads((out / "eval.json").read_text())
    assert final["step"] == STEPS and final["num_samples"] == val_samples, final
    if cfg.distill.type != "none":
        assert 0.0 <= final["teacher_top1"] <= 1.0 and "dist_top1" in final, final
    # Exactly once, not just as many: the loss of one process reading every shard in turn. Under
    # DDP the two agree to ~1e-8 (measured), so a sample counted twice and another missed shows
    # unless the two have the same loss; FSDP runs the forward with bf16 parameters, not fp32 ones
    # under autocast, which moved ViT-B's mean loss by 3.5e-4 and 2.1e-3 (measured).
    tolerance = 1e-5 if cfg.parallel.strategy == "ddp" else 5e-3
    ref = tmp_path / "reference"
    proc = run_process(
        [sys.executable, "-m", "vit_dist.evaluate", "--config", str(out / "config.yaml")]
        + [f"checkpoint={out / 'export' / 'model.safetensors'}", f"output_dir={ref}", "data.workers=0"],
        300,
        env=env(),
    )
    assert_ok(proc)
    expected = json.loads((ref / "eval.json").read_text())
    assert expected["num_samples"] == val_samples, expected
    assert final["loss"] == pytest.approx(expected["loss"], abs=tolerance), (final, expected)
    shutil.rmtree(out)  # ~2 GB of checkpoints for the base models: not worth keeping once passed
