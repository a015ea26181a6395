"""``python -m vit_dist.evaluate --config configs/X.yaml checkpoint=PATH [key=value ...]``

Evaluates weights on ``data.val`` exactly once per sample across all processes (also under
``accelerate launch``) and writes ``eval.json`` (top1, top5, loss, num_samples) into
``output_dir``, which must not be a training run's directory (a run owns its directory).
``checkpoint=`` takes a training checkpoint directory (``.../checkpoints/step-N``,
``.../checkpoints/best``, or a run directory: its latest checkpoint), an exported weights
file, or any timm-format file ``vit_dist.models.load_pretrained`` accepts, also on the Hugging
Face hub (``hf-hub:ORG/NAME[@REVISION]``, see ``vit_dist.core.hub``; loaded into ``model.name``).
``ema=true`` evaluates a training checkpoint's EMA weights.

Every process holds the whole model (evaluation needs no gradients or optimizer state).
"""

from __future__ import annotations

import os
from pathlib import Path

from .cli.command import exit_process, parse_args, run_cli, setup_logging
from .cli.help import Key
from .cli.launch_env import load_run_config
from .core import atomic
from .core.errors import ConfigError, DataError
from .core.options import parse_bool, split_options

# The command's own options (``--help`` lists them, then every config key).
OPTIONS = (
    Key(
        "checkpoint",
        "path",
        doc="required: a checkpoint directory (.../checkpoints/step-N, .../checkpoints/best), a run "
        "directory (its latest checkpoint), an exported weights file, any timm-format weights file, "
        "or hf-hub:ORG/NAME[@REVISION]",
    ),
    Key("ema", "bool", "false", "evaluate a training checkpoint's EMA weights", is_bool=True),
)
DESCRIPTION = """Evaluate weights on data.val (exactly once per sample across processes, also under
accelerate launch, whose --mixed_precision sets precision where the config leaves it unset) and
write eval.json into output_dir (not a training run's directory):
  python -m vit_dist.evaluate --config configs/X.yaml checkpoint=PATH [ema=true] [key=value ...]"""


def main(argv: list[str] | None = None) -> int:
    config_path, words = parse_args(
        "python -m vit_dist.evaluate",
        argv,
        options=OPTIONS,
        description=DESCRIPTION,
        words="checkpoint=PATH [ema=true] [key=value ...]",
    )
    setup_logging()

    def _run() -> int:
        opts, overrides = split_options(words, tuple(o.key for o in OPTIONS), others="overrides")
        if not opts.get("checkpoint"):
            raise ConfigError("evaluate needs checkpoint=PATH (a checkpoint directory or a weights file)")
        use_ema = parse_bool("ema", opts.get("ema", "false"))
        # accelerate's --mixed_precision is honoured (launch_env); the parallel keys do not apply.
        cfg, _ = load_run_config(config_path, overrides, keys=("precision",), training=False)
        if not cfg.data.val:
            raise ConfigError("data.val is not set: nothing to evaluate on")
        from .checkpoint.rundir import existing_run  # deferred with torch (below)

        held = existing_run(Path(cfg.output_dir))
        if held:  # a run owns its directory: an evaluation must not overwrite its eval.json
            raise ConfigError(
                f"output_dir={cfg.output_dir} holds a training run ({held}): give the evaluation "
                "its own output_dir=..."
            )
        # The loader workers' forkserver (where one is used) preloads torch beside this process.
        from .runtime.start import prestart

        prestart(cfg.data.workers)
        # torch and everything built on it load only once the command line and config are valid.
        from .checkpoint.weights import checkpoint_classes, load_weights
        from .data import build_loader, loader_config
        from .data.classes import class_map, class_mismatch
        from .models import build_model, check_model_kwargs
        from .runtime.distributed import init_distributed, shutdown
        from .training.exact_eval import evaluate_model, summary_line

        check_model_kwargs(cfg.model.name, cfg.model.kwargs)
        env = init_distributed()
        try:
            settings = loader_config(
                cfg.data,
                cfg.augment,
                train=False,
                batch_size=cfg.eval.batch_size or cfg.train.batch_size,
                seed=cfg.train.seed,
                device=env.device,
            )
            loader = build_loader(settings, env.rank, env.world_size)
            trained = checkpoint_classes(opts["checkpoint"])  # None: weights that record none
            if cfg.data.val_class_map:
                names = trained[1] if trained else None
                mapping = class_map(
                    names,
                    loader.classes,
                    cfg.data.val_class_map,
                    expected_what=f"checkpoint={opts['checkpoint']}",
                    found_what=f"data.val={cfg.data.val}",
                )
                loader.map_labels(mapping, list(names or ()))  # class_map refuses None
            problem = trained and class_mismatch(trained[1], trained[0], loader.classes, loader.num_classes)
            if problem:
                raise DataError(
                    f"data.val={cfg.data.val} does not have the classes {opts['checkpoint']} was trained "
                    f"for ({problem}); or say how its classes map: data.val_class_map=names or a JSON file"
                )
            model = build_model(cfg.model, cfg.data, cfg.data.num_classes or loader.num_classes)
            source = load_weights(model, opts["checkpoint"], use_ema=use_ema)
            model.to(env.device)
            result = evaluate_model(model, loader, env.device, cfg.precision)
            if env.is_main:
                out = Path(cfg.output_dir)
                out.mkdir(parents=True, exist_ok=True)
                atomic.write_json(out / "eval.json", {**result, "weights": source})
                print(f"evaluated {source}", flush=True)
                print(summary_line(result), flush=True)
                print(f"wrote {os.path.abspath(out / 'eval.json')}", flush=True)
        finally:
            shutdown()
        return 0

    return run_cli(_run)


if __name__ == "__main__":
    exit_process(main())
