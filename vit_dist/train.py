"""``python -m vit_dist.train --config configs/X.yaml [key=value ...]``

Also under ``accelerate launch [flags] -m vit_dist.train ...`` (one process per device, DDP or
FSDP from ``parallel.strategy``) and under ``srun`` via slurm/train.sbatch. Prints the run
directory and the final held-out accuracy; a finished run resumed with ``resume=auto`` prints
its result again without training. Exit codes are listed in ``vit_dist.cli``.
"""

from __future__ import annotations

import os
import sys

from .cli import parse_args, run_cli, setup_logging
from .config import load_config


def main(argv: list[str] | None = None) -> int:
    config_path, overrides = parse_args("python -m vit_dist.train", argv)
    setup_logging()
    os.environ.setdefault("WANDB_SILENT", "true")

    def _run() -> int:
        cfg = load_config(config_path, overrides)  # everything validated before any work
        # torch and everything built on it load only once the config is valid.
        from .distributed import init_distributed, shutdown
        from .evaluation import summary_line
        from .models import check_model_kwargs
        from .trainer import Trainer

        check_model_kwargs(cfg.model.name, cfg.model.kwargs)
        env = init_distributed(need_group=cfg.parallel.strategy == "fsdp")
        try:
            trainer = Trainer(cfg, env)
            result = trainer.fit()
            if env.is_main:
                if trainer.already_complete:
                    print(
                        f"run already complete: it ended at step {trainer.step}; nothing to train, its files unchanged "
                        "(a larger train.steps or train.epochs would extend it)",
                        flush=True,
                    )
                print(f"run directory: {os.path.abspath(cfg.output_dir)}", flush=True)
                print(summary_line(result), flush=True)
        finally:
            shutdown()
        return 0

    return run_cli(_run)


if __name__ == "__main__":
    sys.exit(main())
