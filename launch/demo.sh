#!/usr/bin/env bash
# The main job on the embedded default data (scikit-learn's real handwritten digits), one CPU
# process, W&B offline. Sets up .venv on first use. Extra key=value arguments go to the model.
#
# Until the trainer lands this runs the model end to end on real digits (build, forward,
# backward); it becomes the full training run with the trainer.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export WANDB_MODE="${WANDB_MODE:-offline}"
python -m vit_dist.models check vit img_size=16 patch_size=4 in_chans=1 embed_dim=128 depth=4 num_heads=4 \
    --digits 256 "$@"
