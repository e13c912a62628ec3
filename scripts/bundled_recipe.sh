# The bundled model's training recipe, sourced by train_bundled_model.sh and compare_reference.sh so the two cannot
# drift apart: change the recipe here.
LAUNCH=(accelerate launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no train_accelerate.py)
# Objective, data sampling and schedule (shared with the unet_256 reference in compare_reference.sh).
TRAINING=(--resolution 256 --train_batch_size 4 --random_flip --balance_brightness --lambda_l1 10000
    --lr_scheduler linear_decay --mixed_precision bf16 --seed 0)
# The bundled generator: a small, shallow residual U-Net without dropout (the teacher is deterministic and local), and
# a per-pixel tone head for the teacher's flat colour levels, fitted pixel by pixel before training.
# (`--preset bundled`: ngf 16, 5 levels, BatchNorm, residual, dropout 0, tone_head_channels 32; ghibligan.models.presets)
GENERATOR=(--preset bundled --tone_head_init_steps 3000 --ndf 32)
