"""``python -m vit_dist.evaluate --config configs/X.yaml checkpoint=PATH [key=value ...]``

Evaluates weights on ``data.val`` exactly once per sample across all processes (also under
``accelerate launch``) and writes ``eval.json`` (top1, top5, loss, num_samples) into
``output_dir``. ``checkpoint=`` takes a training checkpoint directory (``.../checkpoints/
step-N``, ``.../checkpoints/best``, or a run directory: its latest checkpoint), an exported
weights file, or any timm-format file ``vit_dist.models.load_pretrained`` accepts.
``ema=true`` evaluates a training checkpoint's EMA weights.

Every process holds the whole model (evaluation needs no gradients or optimizer state).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .cli import parse_args, run_cli, setup_logging


def _pop(overrides: list[str], key: str) -> tuple[str | None, list[str]]:
    value, rest = None, []
    for item in overrides:
        if item.startswith(f"{key}="):
            value = item.split("=", 1)[1]
        else:
            rest.append(item)
    return value, rest


def load_weights(model: torch.nn.Module, path: str, use_ema: bool = False) -> str:
    """Load a training checkpoint or a weights file into a plain model; returns a description."""
    from . import checkpoint as ckpt
    from .models import load_pretrained
    from .models.pretrained import fit_state_dict

    p = Path(path)
    if p.is_dir():
        p = ckpt.resolve_checkpoint_dir(p)
        meta = ckpt.read_meta(p)
        key = "ema" if use_ema else "model"
        if meta.get("fsdp"):
            import torch.distributed.checkpoint as dcp

            sd = {k: v.clone() for k, v in model.state_dict().items()}
            state = {key: {n: sd[n] for n, _ in model.named_parameters()} if use_ema else sd}
            # Every process reads the full tensors on its own (no_dist): no collectives, so this
            # also works on one rank of a running job (the trainer's final export).
            dcp.load(state, checkpoint_id=str(p / "dcp"), no_dist=True)
            sd.update(state[key])
        else:
            state = torch.load(p / "state.pt", map_location="cpu", weights_only=True)
            if key not in state:
                raise ckpt.CheckpointError(f"{p} has no {key} weights")
            sd = {**model.state_dict(), **state[key]} if use_ema else state[key]
        sd, _ = fit_state_dict(model, sd, str(p))
        model.load_state_dict(sd)
        return f"{'EMA of ' if use_ema else ''}training checkpoint {p} (step {meta['step']})"
    return str(load_pretrained(model, p))


def main(argv: list[str] | None = None) -> int:
    config_path, overrides = parse_args("python -m vit_dist.evaluate", argv)
    setup_logging()
    checkpoint, overrides = _pop(overrides, "checkpoint")
    use_ema, overrides = _pop(overrides, "ema")

    def _run() -> int:
        from .config import ConfigError, load_config
        from .models.registry import check_model_kwargs

        if not checkpoint:
            raise ConfigError("evaluate needs checkpoint=PATH (a checkpoint directory or a weights file)")
        cfg = load_config(config_path, overrides)
        check_model_kwargs(cfg.model.name, cfg.model.kwargs)
        if not cfg.data.val:
            raise ConfigError("data.val is not set: nothing to evaluate on")

        from .data import EvalSums, build_loader
        from .distributed import init_distributed, shutdown
        from .trainer import build_model, data_config, run_summary

        env = init_distributed()
        try:
            loader = build_loader(data_config(cfg, False, env.device), env.rank, env.world_size)
            model = build_model(cfg, cfg.data.num_classes or loader.num_classes)
            what = load_weights(model, checkpoint, use_ema=str(use_ema).lower() in ("1", "true", "yes"))
            model.to(env.device).eval()
            from .amp import autocast

            sums = EvalSums(env.device)
            with torch.no_grad():
                for batch in loader:
                    x = loader.images(batch, env.device)
                    with autocast(env.device, cfg.precision):
                        logits = model(x)
                    sums.update(logits, batch["label"].to(env.device), batch["valid"].to(env.device))
            r = sums.reduce()
            result = {"top1": r["top1"], "top5": r["top5"], "loss": r["loss"], "num_samples": r["count"]}
            if env.is_main:
                out = Path(cfg.output_dir)
                out.mkdir(parents=True, exist_ok=True)
                (out / "eval.json").write_text(json.dumps({**result, "weights": what}, indent=1))
                print(f"evaluated {what}", flush=True)
                print(run_summary(result), flush=True)
                print(f"wrote {os.path.abspath(out / 'eval.json')}", flush=True)
        finally:
            shutdown()
        return 0

    return run_cli(_run)


if __name__ == "__main__":
    sys.exit(main())
