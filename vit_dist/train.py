"""``python -m vit_dist.train --config configs/X.yaml [key=value ...]``

Also under ``accelerate launch [flags] -m vit_dist.train ...`` (one process per device, DDP or
FSDP from ``parallel.strategy``) and under ``srun`` via slurm/train.sbatch. Prints the run
directory and the final held-out accuracy; a finished run resumed with ``resume=auto`` prints
its result again without training. Exit codes are listed in ``vit_dist.cli.command``. ``--help`` lists
every config key; ``--key value`` and ``--key=value`` mean ``key=value``. accelerate's own
``--mixed_precision``, ``--use_fsdp`` and ``--dynamo_backend`` set the matching keys where the
config leaves them unset (``vit_dist.cli.launch_env``).
"""

from __future__ import annotations

import logging
import os

from .cli.command import exit_process, parse_args, run_cli, setup_logging
from .cli.launch_env import load_run_config, unused_settings
from .core import notices

log = logging.getLogger(__name__)

DESCRIPTION = """Train a model: python -m vit_dist.train --config configs/X.yaml [key=value ...]

Also under accelerate launch [flags] -m vit_dist.train ... (one process per device). accelerate's
--mixed_precision bf16|fp16, --use_fsdp (with --fsdp_reshard_after_forward false and
--fsdp_activation_checkpointing true) and --dynamo_backend inductor set precision,
parallel.strategy=fsdp (parallel.reshard_after_forward, parallel.activation_checkpointing) and
parallel.compile=true where the config leaves them unset; where the config sets one of them
differently, the run stops before any work naming both."""


def main(argv: list[str] | None = None) -> int:
    config_path, overrides = parse_args("python -m vit_dist.train", argv, description=DESCRIPTION)
    setup_logging()
    os.environ.setdefault("WANDB_SILENT", "true")

    def _run() -> int:
        # Preemption notices are recorded from here on: none is lost to the default handler
        # (exit 143, no preempted.json) while the job starts (core.notices).
        notices.listen()
        # Everything validated before any work, accelerate's own flags included (launch_env).
        cfg, settings_from = load_run_config(config_path, overrides)
        for key, source in settings_from.items():
            if source.startswith("accelerate"):
                log.info(f"{key} from {source}")
        unused = unused_settings(os.environ)
        if unused:
            log.info(f"warning: accelerate settings vit_dist does not use: {', '.join(unused)}")
        # Where the loader workers fork from a forkserver, it starts now: its preload (torch)
        # runs beside this process's own start-up instead of before the first batch.
        from .runtime.start import prestart

        prestart(cfg.data.workers)
        # torch and everything built on it load only once the config is valid.
        from .models import check_model_kwargs
        from .runtime.distributed import init_distributed, shutdown
        from .training.exact_eval import summary_line
        from .training.trainer import Trainer

        check_model_kwargs(cfg.model.name, cfg.model.kwargs)
        env = init_distributed(need_group=cfg.parallel.strategy == "fsdp")
        try:
            trainer = Trainer(cfg, env, settings_from=settings_from)
            result = trainer.fit()
            if env.is_main:
                if trainer.already_complete:
                    fewer = (
                        f", and this config asks for {trainer.total_steps} steps"
                        if trainer.total_steps < trainer.step
                        else ""
                    )
                    print(
                        f"run already complete: it ended at step {trainer.step}{fewer}; nothing to train, its files "
                        "unchanged (a larger train.steps or train.epochs would extend it)",
                        flush=True,
                    )
                print(f"run directory: {os.path.abspath(cfg.output_dir)}", flush=True)
                print(summary_line(result), flush=True)
        finally:
            shutdown()
        return 0

    return run_cli(_run)


if __name__ == "__main__":
    exit_process(main())
