#!/usr/bin/env bash
# The main job: train a ViT on the bundled real data (scikit-learn's handwritten digits), one
# CPU process, W&B offline. Sets up .venv on first use, writes the digits shards to data/digits
# if missing, trains with configs/digits_vit.yaml, and prints the run directory and the
# held-out top-1. Extra key=value arguments override the config (e.g. train.epochs=10).
# resume=auto: run again, it finds its finished run in output_dir and prints that run's result
# without training (an interrupted run continues); output_dir=runs/other trains afresh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export WANDB_MODE="${WANDB_MODE:-offline}"
if [ ! -f data/digits/dataset.json ]; then
    python -m vit_dist.data.shards --from digits --img-size 16 --shard-samples 100 --out data/digits
fi
python -m vit_dist.train --config configs/digits_vit.yaml resume=auto "$@"
