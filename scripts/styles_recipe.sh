# The multi-style guided-filter model's training recipe (ghibli-styles), sourced by train_bundled_model.sh: change the
# recipe here. One style-conditioned GuidedFilterGenerator (--preset guided: joint bilateral upsampling, 3 flattening
# passes and 6 dilated ones (2, 4, 8, 2, 4, 8: ghibli's flat share 0.75 -> 0.90x its teacher's; session 17), per-style
# detail of the photo smoothed at full resolution by a fast guided filter, a posterizer and a 3x3 median in CIE L*)
# learns three teachers at once; each training sample draws one style (target column); L1 + L1 on image gradients + 0.3
# × the gradient-distribution loss (the targets' edge strengths wherever they are: sharper borders, toon's ink lines),
# no GAN (a style-aware GAN phase of 300 steps changed nothing measurable: the discriminator stayed at chance,
# docs/experiments.md). The preset's posterizer (levels=6, in L*) starts each style at its targets' own levels,
# estimated before training (toon 5.00, painterly 7.00, ghibli none), and each style's detail weight at its targets'
# share of the smoothed photo's fine structure (ghibli 0.19, toon 0.47, painterly 0.92). The tone head starts as the
# identity (--tone_head_init_steps 0): fitted pixel by pixel from the raw photo to the targets it learns the teachers'
# levels as a smeared staircase, which the posterizer after it then cuts a second time (toon lost 5 points to that
# start, docs/experiments.md, session 15). A per-style gate (--preset guided's surface_gate) lets toon and painterly
# keep the photo's own surface where the shared network draws ghibli's plateaus.
STYLES_TEACHERS=(toon:ghibli toon:toon toon:painterly)
STYLES_COLUMNS=(ghibli toon painterly)
# At export the posterizing styles take their teachers' full posterizer strength: trained, the posterizer settles at
# part strength (toon 0.95, painterly 0.76), L1's hedge at borders it is unsure of, which costs painterly its flat
# regions (flat share 0.84x the teacher's at 0.76, 0.93x at 1, for 1.5 points of error removed; session 15).
STYLES_POSTERIZE=(toon=1 painterly=1)
# Likewise the toon teacher's 3x3 median of its L* levels is a full one; trained, the model's median settles at 0.79
# for toon. At the teacher's full strength toon's flat share rose from 0.91 to 0.95x its teacher's on the 8 held-out
# photos and from 0.89 to 0.96x on 13 others (a second split), error removed the same or +0.3 (session 18).
STYLES_DESPECKLE=(toon=1)
# Photos larger than the pairs' 512 px are drawn at 512 px in `ghibli` and `toon` and the cartoon upsampled (the model's
# work_sides): the ghibli teacher paints its regions at 512 px and upsamples them, and drawn at the photo's size the
# model's features are half the teachers' size in pixels. Against the teachers run on 1024-px photos: ghibli 57.6 ->
# 71.4 %, toon 59.0 -> 72.6 % of the error removed; painterly keeps the photo's own detail, which 512 px loses (86.4 ->
# 66.4 %), so it is drawn at the photo's size (session 19).
STYLES_WORK_SIDES=(ghibli=512 toon=512)
# The photo smoothing's ε of each photo grows by 5x its estimated noise variance (the gain of
# `GuidedFilterGenerator(smoothing_noise=...)`): a noisy photo's grain is smoothed away as the teachers' own smoothing
# does, where the trained ε, fitted to clean photos, kept it as speckles. On the 8 held-out photos with noise of σ 10
# grey levels (scripts/photo_conditions.py): toon 83.6 -> 84.3 % of the error removed, flat share 0.84 -> 0.92x;
# painterly 78.1 -> 81.7 %, 0.66 -> 0.87x; the photos as they are within 0.3 points (session 20).
STYLES_SMOOTHING_NOISE=5
# The photo smoothing's ε was learned on 512-px photos; on a larger photo it grows in proportion to the long side, up
# to 2x (`smoothing_reference_side`): the teachers' smoothing windows grow with the photo, the model's are fixed in
# pixels. Only `painterly` is drawn at the photo's size by default; on the 8 held-out photos at 1024 / 768 px its error
# removed 86.5 -> 87.5 % / 87.3 -> 87.8 %, gradient energy 1.12 -> 1.04x / 1.06 -> 1.02x; at 1024 px under every
# condition of scripts/photo_conditions.py +0.8 to +1.3 points (session 23). 512 px and smaller photos are unchanged.
STYLES_SMOOTHING_REFERENCE_SIDE=512
# A dark photo is drawn in `ghibli` as its teacher draws it: brightened (linear light, at most 4x, highlights rolled
# off) until its 99th-percentile luminance reaches 0.39, drawn, and darkened back (ghibligan/exposure.py; the teacher's
# exposure_target). No training photo is that dark, so the weights and the pairs are unchanged; on the 8 held-out photos
# 2 stops under, ghibli 49.1 -> 58.7 % of the error removed against its teacher (session 21).
STYLES_EXPOSURE_TARGETS=(ghibli=0.39)
# The toon teacher's contour lines are drawn by the pipeline itself, with the teacher's own line algorithm
# (ghibligan/contour_lines.py), on the cartoon at the photo's size: the teacher thins its lines to one pixel at any size,
# so it inks a 1024-px photo (1.1 % of the pixels) and leaves a 512-px one nearly bare, and a model drawn at 512 px
# and upsampled cannot place them. The model's contour_lines carries the teacher's settings. On the 8 held-out photos,
# toon's error removed against its teacher: 512 px 87.5 -> 89.1 %, 1024 px 72.5 -> 85.6 % (session 22).
STYLES_CONTOUR_LINES=(toon)
# `toon` drawn at its work side is brought to the photo's size by joint bilateral upsampling guided by the photo
# (smoothed by the line stage) with a range sigma of 24 grey levels, not bilinear (ghibligan/upsampling.py): its
# teacher draws crisp levels at the photo's size, which a bilinear ramp blurs. On the 8 held-out photos at 1024 px,
# toon's flat share 0.86 -> 0.90x its teacher's, error removed 85.6 % both; at 768 px 0.87 -> 0.91x, 85.1 % both.
# `ghibli` stays bilinear: its teacher upsamples its 512-px painting so (68.4 % against 71.4 %, session 23).
STYLES_JOINT_UPSAMPLING=(toon=24)
STYLES_LAUNCH=(accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no
    train_accelerate.py)
# --resolution 304: PairTransform resizes the shorter side to 1.12 × 304 = 340 px, the photos' own scale at 512 × 341.
# Learning rate 1e-3 with gradients clipped at 0.5: at 2e-3 unclipped the first run diverged at step ~310 (L1 0.07 →
# 0.9, outputs stuck at the clamp).
STYLES_TRAINING=(--preset guided --target_column "${STYLES_COLUMNS[@]}" --lambda_adversarial 0 --lambda_l1 1
    --lambda_gradient 1 --lambda_gradient_distribution 0.3 --learning_rate 1e-3 --adam_beta1 0.9
    --lr_scheduler linear_decay --max_grad_norm 0.5 --train_batch_size 8 --resolution 304 --random_flip
    --tone_head_init_steps 0 --dataloader_num_workers 1 --seed 0 --validation_split validation
    --report_to none)
