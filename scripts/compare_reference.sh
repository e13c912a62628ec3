#!/usr/bin/env bash
# The bundled model's recipe against the reference pix2pix unet_256 (ngf=64, dropout 0.5, transposed convs, ndf=64),
# trained on the same pairs with the same objective, crops, batch, schedule and number of steps, then evaluated on the
# same held-out photos. unet_256 is ~10× slower per step on CPU, so the default is 1000 steps (~1 h on 2 cores).
#
#   bash scripts/compare_reference.sh [PAIRS_DIR] [WORK_DIR]      (STEPS=1000 by default; PAIRS_DIR from make-pairs)
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-runs/bundled/pairs}
WORK=${2:-runs/compare}
STEPS=${STEPS:-1000}

source scripts/bundled_recipe.sh
common=(--train_data_dir "$PAIRS" "${TRAINING[@]}" --max_train_steps "$STEPS"
    --checkpointing_steps 250 --checkpoints_total_limit 1 --validation_steps 500 --resume_from_checkpoint latest)

"${LAUNCH[@]}" "${common[@]}" --output_dir "$WORK/bundled-recipe" "${GENERATOR[@]}"
"${LAUNCH[@]}" "${common[@]}" --output_dir "$WORK/unet_256" --generator unet --ngf 64 --num_downs 8 --norm batch --ndf 64

python scripts/evaluate_fidelity.py --model "$WORK/bundled-recipe" --pairs "$PAIRS" --split validation \
    --reference "$WORK/unet_256" --json "$WORK/metrics.json"
