#!/usr/bin/env bash
# Reproduce the bundled model from scratch on CPU (about 40 minutes on 2 cores; a GPU is not needed):
#   1. pairs: photos → toon:painterly targets, 512 px, 12 % of the photos held out (stable by file name)
#   2. Pix2Pix training of a small U-Net (ngf=16), bf16, brightness-balanced sampling
#   3. held-out fidelity to the teacher, then export (fp16 safetensors + model card) into the package
#
#   bash scripts/train_bundled_model.sh [PHOTOS_DIR] [WORK_DIR]      (STEPS=4000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=${1:-../shared/photos}
WORK=${2:-runs/bundled}
STEPS=${STEPS:-4000}

ghibligan make-pairs --photos "$PHOTOS" --teacher toon:painterly --max_side 512 --validation_fraction 0.12 \
    --output_dir "$WORK/pairs"

accelerate launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no train_accelerate.py \
    --train_data_dir "$WORK/pairs" --output_dir "$WORK/model" \
    --generator unet --ngf 16 --num_downs 8 --norm batch --residual --ndf 32 \
    --resolution 256 --train_batch_size 4 --random_flip --balance_brightness \
    --max_train_steps "$STEPS" --lr_scheduler linear_decay --mixed_precision bf16 --seed 0 \
    --checkpointing_steps 500 --checkpoints_total_limit 2 --validation_steps 500 --resume_from_checkpoint latest

python scripts/evaluate_fidelity.py --model "$WORK/model" --pairs "$WORK/pairs" --split validation \
    --export ghibligan/pretrained/toon-painterly-unet --teacher toon:painterly
