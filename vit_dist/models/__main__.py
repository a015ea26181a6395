"""``python -m vit_dist.models``: inspect the model zoo.

python -m vit_dist.models list [PATTERN]            names, parameters, GFLOPs per image
python -m vit_dist.models list --timm PATTERN       timm's models (model.name=timm:<name>) matching
    PATTERN (e.g. 'convnext*'), with parameters and GFLOPs when at most 50 match; timm has
    1000+, so a plain ``list`` only counts them
python -m vit_dist.models check NAME [key=value ...] [--weights FILE] [--digits N]
    build a model (any create_model keyword as key=value), optionally load timm-format
    weights, and run a forward + backward pass on N real handwritten digits from
    scikit-learn (upscaled to the model's input size), printing shapes, loss and time.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time

import torch

from ..core.errors import ConfigError
from . import create_model, flops_per_image, list_families, list_models, load_pretrained
from .timm_models import PREFIX as TIMM_PREFIX
from .timm_models import list_timm_models, timm_installed

_TIMM_SIZES_UP_TO = 50  # building each on the meta device takes ~0.1 s: sizes for a short list only


def _parse_value(v: str):
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v  # a bare string such as global_pool=avg


def _cmd_list(pattern: str) -> None:
    print(f"{'model':36s} {'params (M)':>10s} {'GFLOPs':>8s}")
    for name in list_models(pattern):
        with torch.device("meta"):  # sizes only: no memory, no init cost
            m = create_model(name)
        n = sum(p.numel() for p in m.parameters())
        print(f"{name:36s} {n / 1e6:10.1f} {flops_per_image(m) / 1e9:8.2f}")
    print(f"free-form families: {', '.join(list_families())}")
    if timm_installed():
        print(
            f"timm: {len(list_timm_models())} more as {TIMM_PREFIX}<name> "
            "(python -m vit_dist.models list --timm PATTERN lists them)"
        )
    else:
        print(f"timm: not installed (pip install vit_dist[timm] for {TIMM_PREFIX}<name> models)")


def _cmd_list_timm(pattern: str) -> None:
    names = list_timm_models(pattern)
    if not names:
        raise ConfigError(f"no timm model matches {pattern!r} (a shell-style pattern, e.g. 'convnext*')")
    if len(names) > _TIMM_SIZES_UP_TO:
        for name in names:
            print(TIMM_PREFIX + name)
        print(f"{len(names)} timm models (sizes shown for at most {_TIMM_SIZES_UP_TO}: narrow the pattern)")
        return
    print(f"{'model':42s} {'params (M)':>10s} {'GFLOPs':>8s}")
    for name in names:
        try:
            with torch.device("meta"):  # sizes only: no memory, no init cost
                m = create_model(TIMM_PREFIX + name)
        except ValueError:  # one that cannot be built or run at its default size: name only
            print(f"{TIMM_PREFIX + name:42s} {'?':>10s} {'?':>8s}")
            continue
        n = sum(p.numel() for p in m.parameters())
        print(f"{TIMM_PREFIX + name:42s} {n / 1e6:10.1f} {flops_per_image(m) / 1e9:8.2f}")
    print(f"{len(names)} timm models at their default input size")


def digits_batch(n: int, img_size: int, in_chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n real 8x8 digits from scikit-learn, upscaled to img_size, standardised."""
    from sklearn.datasets import load_digits  # slow to import; only this command needs it

    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, in_chans, -1, -1).contiguous()
    return x, torch.tensor(d.target[:n])


def _cmd_check(name: str, kv: list[str], weights: str | None, n: int) -> None:
    kwargs = {}
    for item in kv:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        kwargs[k] = _parse_value(v)
    kwargs.setdefault("num_classes", 10)
    model = create_model(name, **kwargs)
    if weights:
        print(load_pretrained(model, weights))
    size = model.img_size if isinstance(model.img_size, int) else model.img_size[0]
    x, y = digits_batch(n, size, model.in_chans)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{name}: {params / 1e6:.2f}M parameters, {flops_per_image(model) / 1e9:.3f} GFLOPs/image at {size}px"
    )
    t0 = time.perf_counter()
    model.train()
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    dt = time.perf_counter() - t0
    print(
        f"forward+backward on {n} real digits {tuple(x.shape)} -> logits {tuple(logits.shape)}, "
        f"loss {loss.item():.4f} (untrained; ln(10) = 2.3026), {n / dt:.1f} images/s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vit_dist.models", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("list", help="list registered models")
    pl.add_argument("pattern", nargs="?", default="*")
    pl.add_argument("--timm", metavar="PATTERN", help="list timm's models matching PATTERN (e.g. 'vit_*')")
    pc = sub.add_parser("check", help="build a model and run it on real digits")
    pc.add_argument("name")
    pc.add_argument("kv", nargs="*", metavar="key=value")
    pc.add_argument("--weights", help="timm-format weights to load first")
    pc.add_argument("--digits", type=int, default=64, help="number of real digits to run (default 64)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "list" and args.timm:
            _cmd_list_timm(args.timm)
        elif args.cmd == "list":
            _cmd_list(args.pattern)
        else:
            _cmd_check(args.name, args.kv, args.weights, args.digits)
    except (ValueError, FileNotFoundError) as e:  # user mistakes: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
