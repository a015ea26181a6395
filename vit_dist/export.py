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

The model is rebuilt exactly as training built it, from the resolved config stored in the
checkpoint's ``meta.json`` (``vit_dist.checkpoint.weights``).
"""

from __future__ import annotations

from .cli.command import exit_process, parse_args, run_cli
from .cli.help import Key
from .core.errors import ConfigError
from .core.options import parse_bool, split_options

# The command's options (``--help`` lists them).
OPTIONS = (
    Key(
        "checkpoint",
        "path",
        doc="required: a checkpoint directory (.../checkpoints/step-N, .../checkpoints/best), a "
        ".../checkpoints directory or a run directory (their latest complete checkpoint); DDP or FSDP",
    ),
    Key(
        "out",
        "path",
        "<run dir>/export/model.safetensors",
        "the .safetensors file to write; its .json sidecar (model, classes, preprocessing) goes beside it",
    ),
    Key("ema", "bool", "false", "export the EMA weights (default file model_ema.safetensors)", is_bool=True),
)


def main(argv: list[str] | None = None) -> int:
    _, items = parse_args(
        "python -m vit_dist.export",
        argv,
        options=OPTIONS,
        config=False,
        description="Export a training checkpoint to a weights-only .safetensors file plus a sidecar\n"
        ".json (model, classes, preprocessing).",
        words="checkpoint=PATH [out=FILE] [ema=true]",
    )

    def _run() -> int:
        opts, _ = split_options(items, tuple(o.key for o in OPTIONS))
        if not opts.get("checkpoint"):
            raise ConfigError("export needs checkpoint=PATH (a checkpoint or run directory)")
        ema = parse_bool("ema", opts.get("ema", "false"))
        from .checkpoint.weights import (  # torch: after the options are checked
            export_checkpoint,
            read_sidecar,
        )

        weights = export_checkpoint(opts["checkpoint"], opts.get("out") or None, ema=ema)
        info = read_sidecar(weights) or {}
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
    exit_process(main())
