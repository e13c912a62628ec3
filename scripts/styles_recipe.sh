# The multi-style guided-filter model's training recipe (ghibli-styles), sourced by train_bundled_model.sh: change the
# recipe here. One style-conditioned GuidedFilterGenerator (--preset guided: joint bilateral upsampling, 3 flattening
# passes, per-style detail of the photo smoothed at full resolution by a fast guided filter, a posterizer and a 3x3
# median in CIE L*) learns three teachers at once; each training sample draws one style (target column);
# L1 + L1 on image gradients + 0.3 × the gradient-distribution loss (the targets' edge strengths wherever they are:
# sharper borders, toon's ink lines), no GAN (a style-aware GAN phase of 300 steps changed nothing measurable: the
# discriminator stayed at chance, docs/experiments.md). The preset's posterizer (levels=6, in L*) starts each style at
# its targets' own levels, estimated before training (toon 5.00, painterly 7.00, ghibli none), and each style's detail
# weight at its targets' share of the smoothed photo's fine structure (ghibli 0.26, toon 0.60, painterly 1.00).
STYLES_TEACHERS=(toon:ghibli toon:toon toon:painterly)
STYLES_COLUMNS=(ghibli toon painterly)
STYLES_LAUNCH=(accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no
    train_accelerate.py)
# --resolution 304: PairTransform resizes the shorter side to 1.12 × 304 = 340 px, the photos' own scale at 512 × 341.
# Learning rate 1e-3 with gradients clipped at 0.5: at 2e-3 unclipped the first run diverged at step ~310 (L1 0.07 →
# 0.9, outputs stuck at the clamp).
STYLES_TRAINING=(--preset guided --target_column "${STYLES_COLUMNS[@]}" --lambda_adversarial 0 --lambda_l1 1
    --lambda_gradient 1 --lambda_gradient_distribution 0.3 --learning_rate 1e-3 --adam_beta1 0.9
    --lr_scheduler linear_decay --max_grad_norm 0.5 --train_batch_size 8 --resolution 304 --random_flip
    --tone_head_init_steps 1000 --dataloader_num_workers 1 --seed 0 --validation_split validation
    --report_to none)
