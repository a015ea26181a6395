"""``python -m vit_dist.predict checkpoint=PATH IMAGE|DIR [...] [topk=5] [ema=true] [out=preds.jsonl]``

Classifies image files and prints, per image, the ``topk`` classes with their probabilities::

    digit_3.jpg
      1. 3          0.9812
      2. 8          0.0101

``checkpoint=`` is either a training checkpoint (a checkpoint directory, a ``checkpoints/``
directory or a run directory; the model and preprocessing come from its ``meta.json``,
``ema=true`` takes its EMA weights) or an exported ``.safetensors`` file with its sidecar
``.json`` beside it (``python -m vit_dist.export``), or ``hf-hub:ORG/NAME[@REVISION]``: a timm
model on the Hugging Face hub, whose ``config.json`` gives the architecture, preprocessing and
(when it has ``label_names``) the class names (``vit_dist.core.hub``). Class names come from the
training data's ``dataset.json``; without one the class index is printed.

Each image gets the evaluation transform of training (resize the shorter side to
``img_size / crop_pct``, center crop ``img_size``, normalise with the saved mean/std), so a
prediction here matches what validation measured. An image that cannot be read is reported on
one line (``error: cannot read image X: ...``, on stderr), the others are still predicted, and
the exit code is then non-zero (3, as for data errors). A directory stands for its image files
(by extension, recursively, in path order; symlinks inside it are not followed). ``out=FILE``
writes one JSON record per image there instead of printing (``{"image", "top": [{"class",
"index", "prob"}]}`` or ``{"image", "error"}``), published whole at the end. Runs on the CPU.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Literal

from .cli.command import exit_process, parse_args, run_cli
from .cli.help import Key
from .core import atomic
from .core.errors import EXIT_DATA, ConfigError, DataError
from .core.files import read_bytes
from .core.options import parse_bool, split_options

# The command's options (``--help`` lists them); every other word is an image file.
OPTIONS = (
    Key(
        "checkpoint",
        "path",
        doc="required: a training checkpoint (a checkpoint, checkpoints/ or run directory), an exported "
        ".safetensors with its .json beside it, or hf-hub:ORG/NAME[@REVISION]",
    ),
    Key("topk", "int", "5", "how many classes to print per image", ">= 1"),
    Key("ema", "bool", "false", "a training checkpoint's EMA weights", is_bool=True),
    Key(
        "out",
        "path",
        "",
        "write one JSON line per image here (e.g. preds.jsonl: image, top classes with index and "
        "probability, or the error) instead of printing; published whole when the command ends",
    ),
)
_KEYS = tuple(o.key for o in OPTIONS)


def resize_filter(name: str | None) -> Literal["bilinear", "bicubic"]:
    """The weights' resize filter (an export or a hub ``pretrained_cfg``), if ours has it:
    exports from before ``data.interpolation`` existed were made with bilinear; a filter we do
    not implement (lanczos, nearest, random) falls back to bilinear with a warning."""
    if name is None or name == "bilinear":
        return "bilinear"
    if name == "bicubic":
        return "bicubic"
    print(
        f"warning: the weights ask for {name!r} resizing, which vit_dist does not do; using bilinear",
        file=sys.stderr,
    )
    return "bilinear"


class Preprocess:
    """Image file bytes -> (1, 3, S, S), the training run's evaluation transform."""

    def __init__(self, info: dict):
        # torch (the transforms): only once predicting
        from .core.config import DataSection
        from .data.transforms import SampleTransform

        data = DataSection(
            img_size=int(info["img_size"]),
            crop_pct=float(info["crop_pct"]),
            interpolation=resize_filter(info.get("interpolation")),
            mean=[float(m) for m in info["mean"]],
            std=[float(s) for s in info["std"]],
        )
        self.default = SampleTransform(data, None)
        # torchvision.io decodes JPEG/PNG/GIF/WebP only; PIL reads the rest (BMP, TIFF, ...).
        self.pil = SampleTransform(data, None, backend="pil")

    def __call__(self, data: bytes):
        try:
            x = self.default(data)
        except Exception:
            x = self.pil(data)
        return x.unsqueeze(0)


def _describe(e: Exception) -> str:
    from PIL import UnidentifiedImageError  # only when an image failed

    if isinstance(e, UnidentifiedImageError):
        return "not an image in a format PIL can read"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


IMAGE_LIMIT = 64 * 2**20  # bytes of one image file (data.max_sample_bytes' default)


def expand_images(paths: list[str]) -> list[str]:
    """The image files to predict: each file as given, and each directory's image files
    (by extension, recursively, sorted by path). Inside a directory, symlinks are not followed
    (a link could lead out of it); a directory without images stays in the list, for
    :func:`predict` to report on one line."""
    from .data.pipeline import IMAGE_EXTS  # with torch: only once the options are checked

    out: list[str] = []
    for given in paths:
        if not os.path.isdir(given):
            out.append(given)
            continue
        found = []
        for root, dirs, files in os.walk(given):  # followlinks=False: linked directories are skipped
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTS and not os.path.islink(path):
                    found.append(path)
        out += sorted(found) or [given]  # path order (a/x before b/y before c.jpg); or the empty dir
    return out


def predict(model, info: dict, images: list[str], topk: int = 5, out=None, err=None, jsonl=None) -> int:
    """Print the top-``topk`` classes of each image (or, with ``jsonl``, a file object, write one
    JSON record per image there); returns the number of unusable images."""
    import torch  # deferred like every torch import here: option errors come first

    from .data.pipeline import IMAGE_EXTS  # with torch, as above

    out, err = out or sys.stdout, err or sys.stderr
    prep = Preprocess(info)
    classes = info.get("classes")
    k = min(topk, int(info.get("num_classes") or topk))
    failed = 0

    def fail(image: str, line: str) -> None:
        nonlocal failed
        failed += 1
        print(f"error: {line}", file=err, flush=True)
        if jsonl is not None:
            jsonl.write(json.dumps({"image": image, "error": line}) + "\n")

    for image in images:
        if os.path.isdir(image):  # what expand_images leaves of a directory without images
            fail(image, f"{image} holds no image files ({', '.join(IMAGE_EXTS)})")
            continue
        try:
            # A regular file of at most IMAGE_LIMIT bytes: a FIFO would block, /dev/zero fill memory.
            data = read_bytes(image, limit=IMAGE_LIMIT, error=DataError, what="image")
        except DataError as e:
            fail(image, str(e))
            continue
        try:
            x = prep(data)
        except Exception as e:  # any reason an image is unusable: report it, go on with the rest
            fail(image, f"cannot read image {image}: {_describe(e)}")
            continue
        with torch.no_grad():
            probs = model(x).float().softmax(-1)[0]
        top = probs.topk(min(k, probs.numel()))
        indices, values = top.indices.tolist(), top.values.tolist()
        names = [classes[i] if classes else str(i) for i in indices]
        if jsonl is not None:
            ranked = [{"class": n, "index": i, "prob": p} for n, i, p in zip(names, indices, values)]
            jsonl.write(json.dumps({"image": image, "top": ranked}) + "\n")
            continue
        width = max(10, *(len(n) for n in names))
        lines = [image] + [f"  {r}. {n:<{width}} {p:.4f}" for r, (n, p) in enumerate(zip(names, values), 1)]
        print("\n".join(lines), file=out, flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    _, items = parse_args(
        "python -m vit_dist.predict",
        argv,
        options=OPTIONS,
        config=False,
        description="Print the top classes of image files (IMAGE: any file PIL reads), from a training\n"
        "checkpoint, an exported .safetensors file (with its .json) or a hf-hub: model.",
        words="checkpoint=PATH IMAGE|DIR [IMAGE|DIR ...] [topk=5] [ema=true] [out=preds.jsonl]",
        words_help="the options below, as key=value, and the image files or directories of them",
    )

    def _run() -> int:
        opts, images = split_options(items, _KEYS, others="files")
        if not opts.get("checkpoint"):
            raise ConfigError("predict needs checkpoint=PATH (a checkpoint/run directory or a .safetensors)")
        if not images:
            raise ConfigError("predict needs at least one image file or directory")
        try:
            topk = int(opts.get("topk", "5"))
        except ValueError:
            raise ConfigError(f"topk={opts['topk']!r}: expected a positive integer") from None
        if topk < 1:
            raise ConfigError(f"topk={topk}: expected a positive integer")
        from .checkpoint.weights import load_model  # torch: only after the options are checked

        model, info = load_model(opts["checkpoint"], ema=parse_bool("ema", opts.get("ema", "false")))
        images = expand_images(images)
        if not opts.get("out"):
            failed = predict(model, info, images, topk=topk)
            return EXIT_DATA if failed else 0
        with atomic.atomic_path(opts["out"]) as tmp, open(tmp, "w") as fh:
            failed = predict(model, info, images, topk=topk, jsonl=fh)
        print(f"wrote {len(images)} predictions ({failed} failed) to {opts['out']}", flush=True)
        return EXIT_DATA if failed else 0

    return run_cli(_run)


if __name__ == "__main__":
    exit_process(main())
