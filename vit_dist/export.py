"""``python -m vit_dist.export checkpoint=PATH [out=FILE] [ema=true]``

Turns a training checkpoint into a consolidated, weights-only ``.safetensors`` file that
``vit_dist.models.load_pretrained`` (and, for the registered timm architectures, timm itself)
loads, plus a sidecar JSON with the same stem that says how to use it::

    runs/x/export/model.safetensors   the model's state dict, timm parameter names
    runs/x/export/model.json          model name + keywords, num_classes, class names,
                                      img_size / mean / std / crop_pct, step, source

``checkpoint=`` takes a checkpoint directory (``.../checkpoints/step-N``, ``.../checkpoints/
best``), a ``.../checkpoints`` directory or a run directory (their latest complete checkpoint).
DDP checkpoints (``state.pt``) and FSDP ones (``dcp/``, sharded by torch.distributed.checkpoint)
both work in one process without a process group: the shards are gathered into full tensors
on load. ``ema=true`` exports the EMA weights instead (default file ``model_ema.safetensors``).
The default output directory is ``<run dir>/export/``. Both files are written atomically
(temporary file, then rename), so a reader never sees half a file.

The model is rebuilt exactly as training built it: the resolved config stored in the
checkpoint's ``meta.json`` goes through ``trainer.build_model``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import warnings
from pathlib import Path
from typing import Any

EXPORT_FORMAT = "vit_dist.export/1"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


# --------------------------------------------------------------------------- command line


def parse_bool(key: str, value: str) -> bool:
    from .config import ConfigError

    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{key}={value!r}: expected true or false")


def split_options(
    items: list[str], keys: tuple[str, ...], positional: bool = False
) -> tuple[dict[str, str], list[str]]:
    """``['checkpoint=x', 'a.jpg']`` -> ``({'checkpoint': 'x'}, ['a.jpg'])``.

    An item counts as an option when the text before its first ``=`` is a plain word and is
    not the name of an existing file; a word that is not one of ``keys`` is a mistake (most
    likely a typo), reported with the valid keys rather than treated as a file name."""
    from .config import ConfigError

    opts: dict[str, str] = {}
    rest: list[str] = []
    for item in items:
        key, eq, value = item.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_][\w.]*", key) and not os.path.exists(item):
            if key not in keys:
                raise ConfigError(f"unknown option {key!r}; options: {', '.join(f'{k}=' for k in keys)}")
            opts[key] = value
        elif positional:
            rest.append(item)
        else:
            raise ConfigError(f"unexpected argument {item!r}; options: {', '.join(f'{k}=' for k in keys)}")
    return opts, rest


# --------------------------------------------------------------------------- loading


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    from .checkpoint import resolve_checkpoint_dir

    return resolve_checkpoint_dir(path)


def run_dir_of(ckpt_dir: Path) -> Path:
    """``runs/x/checkpoints/step-N`` -> ``runs/x``."""
    from .checkpoint import CKPT_DIR

    return ckpt_dir.parent.parent if ckpt_dir.parent.name == CKPT_DIR else ckpt_dir.parent


def dataset_classes(cfg, num_classes: int) -> list[str] | None:
    """Class names from the training data's dataset.json (``data.meta``, else the directory of
    ``data.train`` / ``data.val``), or None when none is readable or the count does not match.
    Relative paths are taken as the training run took them: relative to the current directory."""
    from .data.errors import DataError
    from .data.meta import read_meta
    from .data.spec import is_remote

    candidates: list[str] = [cfg.data.meta] if cfg.data.meta else []
    for spec in (cfg.data.train, cfg.data.val):
        if not spec:
            continue
        parts = [str(s) for s in spec] if isinstance(spec, (list, tuple)) else str(spec).split("::")
        for part in parts:
            part = part.strip()
            if not part or is_remote(part):
                continue
            local = re.sub(r"^file:(//)?", "", part)
            candidates.append(local if os.path.isdir(local) else os.path.dirname(local) or ".")
    for directory in dict.fromkeys(candidates):  # de-duplicated, in order
        try:
            classes = read_meta(directory)["classes"]
        except DataError:
            continue
        if isinstance(classes, list) and len(classes) == num_classes:
            return [str(c) for c in classes]
    return None


def _jsonable(obj: Any) -> Any:
    """Model keywords as JSON (tuples become lists, which the model constructors accept)."""
    return json.loads(json.dumps(obj))


def load_checkpoint_model(path: str | os.PathLike, ema: bool = False):
    """Rebuild the model of a training checkpoint and load its weights (or EMA weights).

    Returns ``(model in eval mode, info)``; ``info`` is the sidecar content (see module doc)."""
    from .checkpoint import CheckpointError, read_meta
    from .config import ConfigError, config_from_dict
    from .evaluate import load_weights
    from .trainer import build_model

    ckpt_dir = resolve_checkpoint(path)
    meta = read_meta(ckpt_dir)
    if "config" not in meta or "num_classes" not in meta:
        raise CheckpointError(f"{ckpt_dir}/meta.json has no config/num_classes: not a vit_dist checkpoint")
    try:
        cfg = config_from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt_dir}/meta.json: its config does not load any more ({e})") from None
    if ema and cfg.ema.decay == 0:
        raise CheckpointError(f"{ckpt_dir} has no EMA weights (trained with ema.decay=0)")
    num_classes = int(meta["num_classes"])
    # Every weight comes from the checkpoint: don't read model.pretrained (it may be gone).
    cfg.model.pretrained = None
    model = build_model(cfg, num_classes)
    with warnings.catch_warnings():
        # DCP notes that it loads in one process when there is no process group: that is the point.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        load_weights(model, str(ckpt_dir), use_ema=ema)
    model.eval()
    info = {
        "format": EXPORT_FORMAT,
        "model_name": cfg.model.name,
        "model_kwargs": _jsonable(getattr(model, "model_kwargs", meta.get("model_kwargs", {}))),
        "num_classes": num_classes,
        "classes": dataset_classes(cfg, num_classes),
        "img_size": cfg.data.img_size,
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "crop_pct": cfg.data.crop_pct,
        "step": int(meta["step"]),
        "ema": ema,
        "source": str(ckpt_dir.resolve()),
    }
    return model, info


# --------------------------------------------------------------------------- writing


def _strip_wrappers(name: str) -> str:
    """DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes, also nested."""
    while True:
        for p in ("module.", "_orig_mod."):
            if name.startswith(p):
                name = name[len(p) :]
                break
        else:
            return name


def _replace_atomically(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def write_weights(model, out: str | os.PathLike, info: dict) -> Path:
    """Write ``model``'s state dict to ``out`` (.safetensors) and ``info`` to the sidecar JSON
    with the same stem, each atomically. Returns the weights path."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        from .config import ConfigError

        raise ConfigError(f"out={out}: the exported file must end in .safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Clones: safetensors refuses tensors that share storage, and the file must not depend on
    # how the live model happens to lay out its parameters.
    sd = {
        _strip_wrappers(k): v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
    }
    sidecar = out.with_suffix(".json")
    tmp_w = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_j = sidecar.with_name(f".{sidecar.name}.tmp-{os.getpid()}")
    try:
        # The metadata repeats the model name so the file alone still says what it is.
        save_file(sd, str(tmp_w), metadata={"format": "pt", "model_name": str(info.get("model_name", ""))})
        tmp_j.write_text(json.dumps({**info, "weights": out.name}, indent=1) + "\n")
        # safetensors creates its file private (0600); give it the umask's mode, like the JSON.
        os.chmod(tmp_w, stat.S_IMODE(tmp_j.stat().st_mode))
        _replace_atomically(tmp_w, out)
        _replace_atomically(tmp_j, sidecar)
    finally:
        for t in (tmp_w, tmp_j):
            t.unlink(missing_ok=True)
    return out


def export_checkpoint(
    path: str | os.PathLike, out: str | os.PathLike | None = None, ema: bool = False
) -> Path:
    """Export a checkpoint (see module doc); returns the written ``.safetensors`` path."""
    model, info = load_checkpoint_model(path, ema=ema)
    if out is None:
        out = run_dir_of(Path(info["source"])) / "export" / f"{'model_ema' if ema else 'model'}.safetensors"
    return write_weights(model, out, info)


def main(argv: list[str] | None = None) -> int:
    from .cli import run_cli

    p = argparse.ArgumentParser(
        prog="python -m vit_dist.export",
        description="Export a training checkpoint to a weights-only .safetensors file plus a sidecar "
        ".json (model, classes, preprocessing).",
    )
    p.add_argument("options", nargs="*", metavar="checkpoint=PATH [out=FILE] [ema=true]")
    items = p.parse_args(argv).options

    def _run() -> int:
        from .config import ConfigError

        opts, _ = split_options(items, ("checkpoint", "out", "ema"))
        if not opts.get("checkpoint"):
            raise ConfigError("export needs checkpoint=PATH (a checkpoint or run directory)")
        ema = parse_bool("ema", opts.get("ema", "false"))
        weights = export_checkpoint(opts["checkpoint"], opts.get("out") or None, ema=ema)
        info = json.loads(weights.with_suffix(".json").read_text())
        print(
            f"exported {'EMA ' if ema else ''}weights of {info['source']} (step {info['step']}, "
            f"{info['model_name']}, {info['num_classes']} classes)",
            flush=True,
        )
        print(f"wrote {weights.resolve()}", flush=True)
        print(f"wrote {weights.with_suffix('.json').resolve()}", flush=True)
        return 0

    return run_cli(_run)


if __name__ == "__main__":
    sys.exit(main())
