"""``python -m vit_dist.evaluate checkpoint=PATH data.val=SPEC [ema=true] [key=value ...]``

Evaluates weights on ``data.val`` exactly once per sample across all processes (also under
``accelerate launch``) and writes ``eval.json`` (top1, top5, loss, num_samples),
``eval_per_class.json`` (per-class samples and top-1, and the confusion matrix up to 1000
classes) and ``confusion.png`` into ``output_dir``, which must not be a training run's directory (a run owns its directory).
``checkpoint=`` takes a training checkpoint directory (``.../checkpoints/step-N``,
``.../checkpoints/best``, or a run directory: its latest checkpoint), an export (``.safetensors``
with its ``.json`` sidecar) or ``hf-hub:ORG/NAME[@REVISION]``: each says which model it is for,
so the model, its classes and its eval preprocessing (img_size, crop_pct, interpolation, mean,
std) come from it, and no ``--config`` is needed; a preprocessing key given in the config file
or on the command line still wins (with a note). Any other timm-format weights file is loaded
into the config's ``model.*``. ``ema=true`` evaluates a training checkpoint's EMA weights.

Every process holds the whole model (evaluation needs no gradients or optimizer state).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .cli.command import exit_process, parse_args, run_cli, setup_logging
from .cli.help import Key
from .cli.launch_env import load_run_config
from .core import atomic
from .core.errors import ConfigError, DataError
from .core.options import parse_bool, split_options

log = logging.getLogger("vit_dist.evaluate")

# The command's own options (``--help`` lists them, then the config keys evaluation uses).
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
write eval.json into output_dir (not a training run's directory). A training checkpoint, an
export or a hf-hub: model brings its own model and preprocessing (no --config needed):
  python -m vit_dist.evaluate checkpoint=runs/X data.val=SPEC output_dir=runs/X-eval [ema=true]
Bare weights files take the model from the config:
  python -m vit_dist.evaluate --config configs/X.yaml checkpoint=FILE [key=value ...]"""


# Preprocessing a self-describing checkpoint brings (its training's eval transform); a value
# given in the config file or on the command line still wins.
PREPROCESSING = ("img_size", "crop_pct", "interpolation", "mean", "std")
# What evaluation reads of the config (``--help`` lists only these): the val data and how it is
# loaded, the batch, precision and output directory; the model keys for a bare weights file.
USED_KEYS = (
    "data.val",
    "data.meta",
    "data.val_class_map",
    "data.num_classes",
    "data.workers",
    "data.prefetch",
    "data.pin_memory",
    "data.normalize_on",
    "data.max_bad_fraction",
    "data.max_image_pixels",
    "data.max_sample_bytes",
    "eval.batch_size",
    "train.batch_size",
    "precision",
    "output_dir",
    "model.",
    *(f"data.{k}" for k in PREPROCESSING),
)


def _with_checkpoint_preprocessing(cfg, info: dict, sources: dict[str, str]) -> list[str]:
    """Set each data preprocessing key the user left at its default to the checkpoint's value;
    the keys the user set to something else (a note each)."""
    notes = []
    for k in PREPROCESSING:
        theirs = info.get(k)
        if theirs is None:
            continue
        theirs = list(theirs) if isinstance(theirs, (list, tuple)) else theirs
        if sources[f"data.{k}"] == "default":
            setattr(cfg.data, k, theirs)
        elif getattr(cfg.data, k) != theirs:
            notes.append(
                f"data.{k}={getattr(cfg.data, k)} ({sources[f'data.{k}']}; the checkpoint's: {theirs})"
            )
    return notes


def main(argv: list[str] | None = None) -> int:
    config_path, words = parse_args(
        "python -m vit_dist.evaluate",
        argv,
        options=OPTIONS,
        description=DESCRIPTION,
        words="checkpoint=PATH data.val=SPEC [ema=true] [key=value ...]",
        help_keys=USED_KEYS,
    )
    setup_logging()

    def _run() -> int:
        opts, overrides = split_options(words, tuple(o.key for o in OPTIONS), others="overrides")
        if not opts.get("checkpoint"):
            raise ConfigError("evaluate needs checkpoint=PATH (a checkpoint directory or a weights file)")
        use_ema = parse_bool("ema", opts.get("ema", "false"))
        # accelerate's --mixed_precision is honoured (launch_env); the parallel keys do not apply.
        keys = ("precision", "model", *(f"data.{k}" for k in PREPROCESSING))  # "model": any model.* key
        cfg, sources = load_run_config(config_path, overrides, keys=keys, training=False)
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
        from .checkpoint.weights import checkpoint_classes, describes_itself, load_model, load_weights
        from .core.hub import is_hub_ref
        from .models import build_model, check_model_kwargs
        from .runtime.distributed import init_distributed, shutdown

        checkpoint = opts["checkpoint"]
        model, info = None, None
        trained: tuple[int, list[str] | None] | None  # what the weights were trained for
        model_keys = sources["model"] != "default"
        # A hub repository with model.* keys given: its weights into that model (fine-tuned hub
        # weights of another layout); otherwise the model, classes and preprocessing are the
        # checkpoint's.
        if describes_itself(checkpoint) and not (is_hub_ref(checkpoint) and model_keys):
            model, info = load_model(checkpoint, ema=use_ema)
            trained = (int(info["num_classes"]), info.get("classes"))
            for note in _with_checkpoint_preprocessing(cfg, info, sources):
                log.info("note: %s is used", note)
            if model_keys:
                log.info(
                    "note: the model is the checkpoint's (%s); model.* keys are not used", info["model_name"]
                )
        else:  # bare weights: the config's model.* keys say what they are for
            check_model_kwargs(cfg.model.name, cfg.model.kwargs)
            trained = checkpoint_classes(checkpoint)  # None: weights that record none
        env = init_distributed()
        try:
            loader = _val_loader(cfg, env, trained, checkpoint)
            if model is None or info is None:
                model = build_model(cfg.model, cfg.data, cfg.data.num_classes or loader.num_classes)
                source = load_weights(model, checkpoint, use_ema=use_ema)
            else:
                source = _described(info)
            model.to(env.device)
            from .training.exact_eval import (  # torch: deferred as above
                PerClass,
                evaluate_model,
                summary_line,
            )

            count, names = trained or (cfg.data.num_classes or loader.num_classes, None)
            per_class = PerClass(count, env.device)
            result = evaluate_model(model, loader, env.device, cfg.precision, per_class=per_class)
            classes = per_class.reduce(names or loader.classes)  # a collective: every rank
            if env.is_main:
                from .metrics.confusion import write_per_class  # matplotlib: only here

                out = Path(cfg.output_dir)
                out.mkdir(parents=True, exist_ok=True)
                atomic.write_json(out / "eval.json", {**result, "weights": source})
                print(f"evaluated {source}", flush=True)
                print(summary_line(result), flush=True)
                print(f"wrote {os.path.abspath(out / 'eval.json')}", flush=True)
                for path in write_per_class(classes, out):
                    print(f"wrote {os.path.abspath(path)}", flush=True)
        finally:
            shutdown()
        return 0

    return run_cli(_run)


def _described(info: dict) -> str:
    """What eval.json's ``weights`` says of a self-describing checkpoint."""
    step = f" (step {info['step']})" if info.get("step") is not None else ""
    return f"{'EMA of ' if info.get('ema') else ''}{info['model_name']} from {info['source']}{step}"


def _val_loader(cfg, env, trained, checkpoint):
    """The val loader, its labels checked against (or mapped onto) the classes the weights were
    trained for: ``trained`` is (count, names or None), or None when the weights record none."""
    # torch and the loader: only once the command line and config are valid (see main)
    from .data import build_loader, loader_config

    settings = loader_config(
        cfg.data,
        cfg.augment,
        train=False,
        batch_size=cfg.eval.batch_size or cfg.train.batch_size,
        seed=cfg.train.seed,
        device=env.device,
    )
    loader = build_loader(settings, env.rank, env.world_size)
    if trained is None and not cfg.data.val_class_map:
        return loader  # weights that record no classes: nothing to check them against
    count, names = trained or (0, None)  # no names with a class map: align_classes says so
    problem = loader.align_classes(names, count, expected_what=f"checkpoint={checkpoint}")
    if problem:
        raise DataError(
            f"data.val={cfg.data.val} does not have the classes {checkpoint} was trained "
            f"for ({problem}); or say how its classes map: data.val_class_map=names or a JSON file"
        )
    return loader


if __name__ == "__main__":
    exit_process(main())
