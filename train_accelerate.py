#!/usr/bin/env python
"""Train a ghibligan generator (Pix2Pix or CartoonGAN objective) on paired images, with 🤗 accelerate.

Examples:

    # Pix2Pix on pairs made by `ghibligan make-pairs` (one CPU or GPU), pix2pix's unet_256 at half width
    accelerate launch train_accelerate.py --train_data_dir pairs/ --output_dir toon-unet \\
        --preset unet_256 --ngf 32 --resolution 256 --train_batch_size 4 --max_train_steps 20000 \\
        --checkpointing_steps 1000 --validation_steps 500 --mixed_precision bf16

    # A Hub pairs dataset whose columns are named differently, pushed to the Hub at the end
    accelerate launch --multi_gpu --num_processes 8 train_accelerate.py \\
        --dataset_name you/ghibli-pairs --input_column raw --target_column Ghibli \\
        --output_dir ghibli-unet --push_to_hub --hub_model_id you/ghibli-unet

    # CartoonGAN: content-only initialization, then edge-promoting adversarial training
    accelerate launch train_accelerate.py --objective cartoongan --preset cartoongan_resnet --train_data_dir pairs/ \\
        --vgg_weights vgg19/model.safetensors --init_steps 2000 --max_train_steps 40000 --output_dir cartoongan

    # One style-conditioned generator for three teachers (make-pairs --teacher toon:ghibli toon:toon toon:painterly):
    # each sample trains on one target column, drawn per sample; L1 + image gradients, no GAN (--lambda_adversarial 0;
    # with a GAN, D is style-aware: one-hot style planes beside the photo)
    accelerate launch train_accelerate.py --train_data_dir pairs/ --output_dir ghibli-styles --preset guided \\
        --target_column ghibli toon painterly --lambda_adversarial 0 --lambda_l1 1 --lambda_gradient 1 \\
        --learning_rate 2e-3 --adam_beta1 0.9 --train_batch_size 8 --max_train_steps 5000

    # Resume a run that stopped (or crashed) from its newest intact checkpoint: the same steps as without the stop
    accelerate launch train_accelerate.py ... --output_dir toon-unet --resume_from_checkpoint latest

    # Any checkpoint is also a model
    python -c "from ghibligan import Cartoonizer; Cartoonizer.from_pretrained('toon-unet/checkpoint-1000/generator')"

Two CPU processes (a real DDP run without a GPU):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 train_accelerate.py ...
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ghibligan.augment import crop_pairs
from ghibligan.checkpoints import checkpoint_step, load_checkpoint, resume_candidates, save_checkpoint
from ghibligan.data import (
    DEFAULT_MAX_UNREADABLE_FRACTION,
    DIRECTIONS,
    PAIRED_LAYOUTS,
    PairedImageDataset,
    StreamingPairedDataset,
    brightness_balanced_sampler,
    build_pair_datasets,
    collate_pairs,
    dataset_brightness,
)
from ghibligan.data_cache import DecodedPairs, available_cores, collate_decoded_pairs
from ghibligan.losses import GAN_MODES, CartoonGANObjective, Objective, Pix2PixObjective
from ghibligan.models import load_generator
from ghibligan.models.guided import LEVEL_SPACES, UPSAMPLERS
from ghibligan.models.presets import GENERATOR_PRESETS, build_discriminator, build_generator, preset_config
from ghibligan.models.vgg import DEFAULT_VGG19_WEIGHTS, VGG19Features
from ghibligan.training import (
    fit_detail_weights,
    fit_level_quantizer,
    fit_tone_head,
    lr_lambda,
    seed_step,
    tone_head_samples,
    training_step,
    validate,
)

logger = get_logger(__name__)

OBJECTIVES: dict[str, type[Objective]] = {"pix2pix": Pix2PixObjective, "cartoongan": CartoonGANObjective}
# --generator, the shorthand of earlier versions: the preset of each generator class
GENERATOR_SHORTHANDS = {"unet": "unet_256", "resnet": "cartoongan_resnet"}
# Model flags that override the preset's __init__ kwargs (None: not given, keep the preset's value)
GENERATOR_OVERRIDES = (
    "ngf", "num_downs", "norm", "dropout", "innermost_kernel", "attention_heads", "up_activation", "upsample",
    "residual", "tone_head_channels", "n_blocks", "scale_factor", "channels", "num_levels", "num_blocks",
    "tone_channels", "upsampler", "line_channels", "flatten_iterations", "flatten_radius", "flatten_dilations",
    "photo_detail", "levels", "despeckle", "level_space", "detail_coring", "photo_smoothing", "smoothing_eps",
    "smoothing_noise", "surface_gate",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="Hub dataset id of paired images (or use --train_data_dir).")
    data.add_argument("--dataset_config_name", default=None, help="Config of --dataset_name, if it has several.")
    data.add_argument(
        "--train_data_dir",
        default=None,
        help="Local pairs: make-pairs output / parquet files, a save_to_disk folder, an imagefolder whose "
        "metadata.jsonl has input_image_file_name and target_image_file_name, or two sub-folders named after "
        "--input_column and --target_column with matching file names.",
    )
    data.add_argument("--split", default="train", help="Split to train on (default: train).")
    data.add_argument("--input_column", default="input_image", help="Column of the photos (default: input_image).")
    data.add_argument(
        "--target_column",
        nargs="+",
        default=["target_image"],
        help="Column of the targets (default: target_image). Several train one style-conditioned generator (e.g. "
        "--preset guided), one style per column in this order, named after it; STYLE=COLUMN names a style "
        "differently from its column (ghibli=Ghibli). Each sample trains on one of them, drawn from the seed, the "
        "epoch and the row.",
    )
    data.add_argument(
        "--paired_layout",
        default="separate",
        choices=PAIRED_LAYOUTS,
        help="'side_by_side': one image per row holding A|B, as in the pix2pix datasets (read from --input_column).",
    )
    data.add_argument("--direction", default="AtoB", choices=DIRECTIONS, help="With side_by_side: A→B or B→A.")
    data.add_argument(
        "--validation_split",
        default=None,
        help="A fraction of the training rows held out for validation (e.g. 0.05), or the name of a split "
        "(default: the dataset's 'validation' split if it has one, else 0.05).",
    )
    data.add_argument("--num_validation_images", type=int, default=4, help="Whole images validated and shown (4).")
    data.add_argument(
        "--validation_max_side", type=int, default=1024, help="Downscale validation images to this longer side (1024)."
    )
    data.add_argument("--max_train_samples", type=int, default=None, help="Use only this many training rows.")
    data.add_argument("--streaming", action="store_true", help="Stream --dataset_name instead of downloading it.")
    data.add_argument("--resolution", type=int, default=256, help="Square training crops of this size (256).")
    data.add_argument("--center_crop", action="store_true", help="Centre crops instead of random ones.")
    data.add_argument("--random_flip", action="store_true", help="Flip input and target horizontally at random.")
    data.add_argument(
        "--balance_brightness",
        action="store_true",
        help="Sample photos so every brightness bin is seen equally (fixes blurred dark photos from rare dark data).",
    )
    data.add_argument(
        "--max_unreadable_fraction",
        type=float,
        default=DEFAULT_MAX_UNREADABLE_FRACTION,
        help="Unreadable training rows are replaced by others (the same on every process); stop once more than this "
        f"fraction of the rows read are unreadable, or 16 in a row ({DEFAULT_MAX_UNREADABLE_FRACTION}).",
    )
    data.add_argument(
        "--decode_cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Decode and resize every training pair once into a uint8 cache (an Arrow file under the datasets cache, "
        "or --cache_dir, keyed on the dataset and the resize: a changed dataset is decoded anew); random crops, flips "
        "and normalization then run on the device, in batches, with the crops of the per-sample path. "
        "--no-decode_cache decodes every sample at every epoch (less disk: the cache takes (1 + styles) × 3 bytes per "
        "pixel of each pair resized to a shorter side of 1.12 × resolution). A --streaming dataset is always decoded "
        "as it is read.",
    )
    data.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=None,
        help="DataLoader worker processes, kept alive across epochs (default: 0 on CPU, where a worker takes a core "
        "from the model and the cache leaves little to load; on a GPU the cores per process less one, at most 8).",
    )
    data.add_argument(
        "--cache_dir",
        default=None,
        help="Where datasets caches downloads, and the decode-once cache (under ghibligan_decoded/; default: the "
        "datasets cache).",
    )

    model = parser.add_argument_group(
        "model", "A preset, or a checkpoint to fine-tune; the flags below --preset change the preset's values."
    )
    model.add_argument("--objective", default="pix2pix", choices=sorted(OBJECTIVES), help="Training objective.")
    model.add_argument(
        "--preset",
        default=None,
        choices=sorted(GENERATOR_PRESETS),
        help="Generator recipe (default: unet_256). "
        + "; ".join(f"{name}: {preset.description}" for name, preset in GENERATOR_PRESETS.items()),
    )
    model.add_argument(
        "--generator",
        default=None,
        choices=sorted(GENERATOR_SHORTHANDS),
        help="Shorthand for a preset: unet = unet_256, resnet = cartoongan_resnet.",
    )
    model.add_argument(
        "--pretrained_model_name_or_path", default=None, help="Fine-tune this generator checkpoint (folder or Hub id)."
    )
    model.add_argument("--ngf", type=int, default=None, help="Generator width (unet_256: 64).")
    model.add_argument("--num_downs", type=int, default=None, help="U-Net depth (unet_256: 8).")
    model.add_argument(
        "--norm", default=None, choices=["batch", "instance", "none"], help="Norm layers of G and D (batch)."
    )
    model.add_argument("--dropout", type=float, default=None, help="U-Net decoder dropout (unet_256: 0.5).")
    model.add_argument("--innermost_kernel", type=int, default=None, help="U-Net last encoder kernel (4).")
    model.add_argument("--attention_heads", type=int, default=None, help="U-Net bottleneck attention heads (0 = off).")
    model.add_argument(
        "--up_activation", default=None, choices=["relu", "leaky_relu"], help="U-Net decoder activation (relu)."
    )
    model.add_argument(
        "--upsample", default=None, choices=["transpose", "resize"], help="Upsampling layers (transpose)."
    )
    model.add_argument(
        "--residual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="U-Net predicts the change to the photo, not the image (keeps detail).",
    )
    model.add_argument(
        "--tone_head_channels",
        type=int,
        default=None,
        help="U-Net per-pixel colour MLP of this width on the output: learns sharp tone curves (flat levels). 0 = off.",
    )
    model.add_argument(
        "--tone_head_init_steps",
        type=int,
        default=3000,
        help="Fit a new tone head pixel by pixel to the training pairs for this many steps before training (seconds).",
    )
    model.add_argument("--n_blocks", type=int, default=None, help="ResNet residual blocks (cartoongan_resnet: 8).")
    model.add_argument(
        "--scale_factor", type=int, default=None, help="guided: the network runs at 1/this resolution (2)."
    )
    model.add_argument(
        "--channels", type=int, default=None, help="guided: width of the low-resolution network's first level (8)."
    )
    model.add_argument(
        "--num_levels", type=int, default=None, help="guided: stride-2 levels of the low-resolution network (3)."
    )
    model.add_argument(
        "--num_blocks", type=int, default=None, help="guided: FiLM residual blocks at the network's coarsest level (4)."
    )
    model.add_argument(
        "--tone_channels",
        type=int,
        default=None,
        help="guided: hidden width of the full-resolution per-pixel tone head (16; 0 = off).",
    )
    model.add_argument(
        "--upsampler",
        default=None,
        choices=UPSAMPLERS,
        help="guided: how the low-resolution surface reaches full resolution: a guided filter (A * photo + b) or joint "
        "bilateral upsampling (a mix of nearby surface values; flat regions stay flat).",
    )
    model.add_argument(
        "--flatten_iterations",
        type=int,
        default=None,
        help="guided: passes of iterated bilateral filtering (mean-shift-like) on the low-resolution surface: plateaus "
        "with sharp borders (0 = off).",
    )
    model.add_argument(
        "--flatten_radius",
        type=int,
        default=None,
        help="guided: window radius of each flattening pass, at low resolution (2): how far a pass reaches.",
    )
    model.add_argument(
        "--flatten_dilations",
        type=int,
        nargs="*",
        default=None,
        metavar="D",
        help="guided: after the flattening passes, one 3x3 pass per value with taps D low-resolution pixels apart "
        "(a-trous, e.g. 2 4 8: regions as wide as the teacher's, 8 neighbours a pass); give no value for none.",
    )
    model.add_argument(
        "--levels",
        type=int,
        default=None,
        help="guided: a full-resolution posterizer (of luma or L*, --level_space), for sharp level borders where a "
        "teacher quantizes luminance (toon, painterly). Each style starts at the levels of its own training targets, "
        "estimated before the first step (this value is only the start of a style without targets), then learns its "
        "step, offset, edge softness and strength. 0 = none.",
    )
    model.add_argument(
        "--despeckle",
        type=int,
        default=None,
        help="guided: window radius of a full-resolution median of the output's luma after the posterizer, as much as "
        "each style learns (1 = 3x3, the one the CPU kernels run; 0 = none): one-level islands a few pixels wide go.",
    )
    model.add_argument(
        "--level_space",
        default=None,
        choices=LEVEL_SPACES,
        help="guided: what the posterizer cuts its levels in and the median sorts: BT.601 luma, or CIE L* (as the toon "
        "teachers quantize; the bundled model's, ~1.1x luma's CPU time).",
    )
    model.add_argument(
        "--photo_detail",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="guided: add back the photo's fine detail with a learned per-style weight (for styles that keep texture).",
    )
    model.add_argument(
        "--detail_coring",
        type=float,
        default=None,
        help="guided, with --photo_detail: keep only the photo's strong detail (edges), its texture and noise cored "
        "away below a threshold τ learned per style, starting here (in [-1, 1] units, e.g. 0.05; 0 = none).",
    )
    model.add_argument(
        "--photo_smoothing",
        type=int,
        default=None,
        help="guided, with --photo_detail: radius (at low resolution) of an edge-aware fast guided filter of the photo "
        "whose full-resolution result the network draws on, instead of the photo's raw detail (0 = off).",
    )
    model.add_argument(
        "--smoothing_eps",
        type=float,
        default=None,
        help="guided, with --photo_smoothing: its initial ε (learned per style), in squared [-1, 1] units: texture of "
        "local variance well below it is flattened (default 0.01; --preset guided: 0.003).",
    )
    model.add_argument(
        "--smoothing_noise",
        type=float,
        default=None,
        help="guided, with --photo_smoothing: raise each photo's ε by this many times its estimated noise variance "
        "(initial gain, learned per style), so noisy photos' grain is smoothed as a clean photo's texture is kept "
        "(0 = off; the bundled model is exported with 5).",
    )
    model.add_argument(
        "--surface_gate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="guided: learn per style how much of the low-resolution network's surface replaces the photo's own (0-2, "
        "from 1), so styles whose teacher is a per-pixel map of the smoothed photo (toon, painterly) can keep it "
        "while another (ghibli) takes the network's plateaus.",
    )
    model.add_argument(
        "--line_channels",
        type=int,
        default=None,
        help="guided: width of the full-resolution ink-line branch (0 = off).",
    )
    model.add_argument("--ndf", type=int, default=64, help="Discriminator width (64).")
    model.add_argument("--n_layers_d", type=int, default=3, help="PatchGAN layers (3 = 70×70 patches).")
    model.add_argument(
        "--discriminator_layout",
        default=None,
        choices=["pix2pix", "cartoongan"],
        help="D layout (default: the objective's).",
    )

    loss = parser.add_argument_group("objective")
    loss.add_argument("--gan_mode", default="vanilla", choices=GAN_MODES, help="Adversarial loss (vanilla).")
    loss.add_argument("--lambda_l1", type=float, default=100.0, help="pix2pix L1 weight λ (100).")
    loss.add_argument(
        "--lambda_gradient",
        type=float,
        default=0.0,
        help="pix2pix: weight of an L1 on image gradients (finite differences): penalizes texture the teacher "
        "removed (0 = off).",
    )
    loss.add_argument(
        "--lambda_gradient_distribution",
        type=float,
        default=0.0,
        help="pix2pix: weight of a loss on the distribution of the output's edge strengths (luma Sobel magnitudes, "
        "sorted and compared with the target's, per image): asks for the target's share of flat pixels and sharp "
        "borders wherever they are, against the blur L1 settles for where the target's borders cannot be predicted "
        "(0 = off).",
    )
    loss.add_argument(
        "--lambda_mse",
        type=float,
        default=0.0,
        help="pix2pix: weight of the squared error to the target (0 = off). Where the target cannot be predicted "
        "exactly (a region border that could fall on either side), L1 settles for the median of what it could be and "
        "the squared error for the mean, which is what PSNR and error removed score.",
    )
    loss.add_argument(
        "--lambda_adversarial",
        type=float,
        default=1.0,
        help="pix2pix: weight of the GAN term (1); 0 trains no discriminator (plain distillation). With several "
        "--target_column styles D is style-aware: it sees one-hot style planes beside the photo.",
    )
    loss.add_argument("--lambda_content", type=float, default=10.0, help="CartoonGAN content weight ω (10).")
    loss.add_argument(
        "--vgg_weights",
        default=DEFAULT_VGG19_WEIGHTS,
        help=f"CartoonGAN: VGG19 ImageNet weights, a safetensors file, folder or Hub id ({DEFAULT_VGG19_WEIGHTS}).",
    )
    loss.add_argument("--init_steps", type=int, default=None, help="CartoonGAN: content-only steps first.")
    loss.add_argument(
        "--init_epochs", type=int, default=None, help="CartoonGAN: content-only epochs (or --init_steps)."
    )

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--train_batch_size", type=int, default=1, help="Batch size per device (1, as in pix2pix).")
    optim.add_argument(
        "--max_train_steps", type=int, default=None, help="Total optimizer steps (or --num_train_epochs)."
    )
    optim.add_argument("--num_train_epochs", type=int, default=200, help="Epochs, if --max_train_steps is not set.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches per optimizer step (1).")
    optim.add_argument("--learning_rate", type=float, default=2e-4, help="Adam learning rate for G and D (2e-4).")
    optim.add_argument("--adam_beta1", type=float, default=0.5, help="Adam β1 (0.5).")
    optim.add_argument("--adam_beta2", type=float, default=0.999, help="Adam β2 (0.999).")
    optim.add_argument(
        "--lr_scheduler",
        default="constant",
        choices=["constant", "linear_decay"],
        help="pix2pix: constant, then linear to 0.",
    )
    optim.add_argument("--lr_decay_start", type=int, default=None, help="linear_decay: first decaying step (half way).")
    optim.add_argument("--max_grad_norm", type=float, default=0.0, help="Clip gradient norms to this (0 = off).")
    optim.add_argument(
        "--mixed_precision", default=None, choices=["no", "fp16", "bf16"], help="Overrides accelerate's config."
    )
    optim.add_argument(
        "--skip_nonfinite_steps",
        action="store_true",
        help="Drop an update whose loss is NaN or infinite and go on (default: stop with an error naming the step "
        "and the loss term, before the weights or a checkpoint are touched).",
    )
    optim.add_argument("--seed", type=int, default=0, help="Random seed (0).")
    optim.add_argument(
        "--channels_last",
        action="store_true",
        help="Train G and D in the channels-last memory layout: faster convolutions on NVIDIA GPUs with tensor cores "
        "(bf16/fp16 mixed precision); usually no gain in float32 or on CPU.",
    )
    optim.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile G and D (in place: checkpoints and the saved model are unchanged). Costs a minute or more "
        "at start, then faster steps on a GPU, mostly for small models whose steps are short (e.g. --preset bundled); "
        "on CPU it needs a C++ compiler and rarely pays.",
    )

    run = parser.add_argument_group("checkpoints, logging, output")
    run.add_argument("--output_dir", required=True, help="Checkpoints, logs, validation grids and the final model.")
    run.add_argument(
        "--checkpointing_steps",
        type=int,
        default=500,
        help="Save the training state, and the generator under checkpoint-N/generator, every N steps (500).",
    )
    run.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep only the newest N checkpoints.")
    run.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder to resume from.")
    run.add_argument(
        "--validation_steps", type=int, default=500, help="Validation grid and metrics every N steps (500)."
    )
    run.add_argument(
        "--report_to",
        default="tensorboard",
        choices=["tensorboard", "wandb", "all", "none"],
        help="Trackers (tensorboard).",
    )
    run.add_argument("--tracker_project_name", default="ghibligan", help="Project name for the trackers.")
    run.add_argument("--push_to_hub", action="store_true", help="Upload the final model to the Hub.")
    run.add_argument("--hub_model_id", default=None, help="Hub repo for --push_to_hub (default: the output_dir name).")
    run.add_argument("--hub_token", default=None, help="Hub token (default: the saved login).")
    args = parser.parse_args(argv)

    # Sanity checks, once, with messages that say what to do.
    if (args.dataset_name is None) == (args.train_data_dir is None):
        parser.error("give exactly one of --dataset_name and --train_data_dir")
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no length to count epochs by)")
    if args.streaming and args.balance_brightness:
        parser.error("--balance_brightness needs the whole dataset; it cannot be combined with --streaming")
    if args.streaming and args.init_epochs is not None:
        parser.error("--init_epochs needs a dataset with a length; with --streaming use --init_steps")
    if args.dataloader_num_workers is not None and args.dataloader_num_workers < 0:
        parser.error(f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}")
    if args.streaming:
        args.decode_cache = False  # a stream is decoded as it is read: there is nothing to cache ahead
    if not 0 <= args.max_unreadable_fraction <= 1:
        parser.error(f"--max_unreadable_fraction must be in [0, 1], got {args.max_unreadable_fraction}")
    if args.resolution % 8 or args.resolution < 32:
        parser.error(f"--resolution must be a multiple of 8 and >= 32, got {args.resolution}")
    if args.objective != "cartoongan" and (args.init_steps is not None or args.init_epochs is not None):
        parser.error("--init_steps and --init_epochs are CartoonGAN's initialization phase: add --objective cartoongan")
    if args.init_steps is not None and args.init_epochs is not None:
        parser.error("give --init_steps or --init_epochs, not both")
    args.styles, args.target_columns = parse_target_columns(parser, args.target_column)
    multi_style = len(args.target_columns) > 1
    # the data's target_column: one column as before, or the list of style columns
    args.target_column = args.target_columns if multi_style else args.target_columns[0]
    if multi_style and args.objective != "pix2pix":
        parser.error(f"several --target_column styles train with --objective pix2pix, not {args.objective}")
    if multi_style and args.paired_layout != "separate":
        parser.error("several --target_column styles need --paired_layout separate")
    for name in ("lambda_l1", "lambda_gradient", "lambda_adversarial", "lambda_gradient_distribution", "lambda_mse"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "validation_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.preset is not None and args.generator is not None:
        parser.error("give --preset or its shorthand --generator, not both")
    args.preset = args.preset or GENERATOR_SHORTHANDS.get(args.generator)
    given = [name for name in GENERATOR_OVERRIDES if getattr(args, name) is not None and name != "norm"]
    if args.pretrained_model_name_or_path and (given or args.preset):
        parser.error(
            f"--pretrained_model_name_or_path fine-tunes a checkpoint as it is: leave out "
            f"{' '.join('--' + name for name in given) or '--preset/--generator'}"
        )
    if not args.pretrained_model_name_or_path:
        cls, _ = preset_config(args.preset)
        foreign = [name for name in given if name not in cls.config_keys()]
        if foreign:
            parser.error(
                f"{' '.join('--' + name for name in foreign)}: not an option of {cls.__name__}, the generator of "
                f"--preset {args.preset or 'unet_256'}"
            )
        if multi_style and "styles" not in cls.config_keys():
            parser.error(
                f"several --target_column styles need a style-conditioned generator (--preset guided); "
                f"{cls.__name__} of --preset {args.preset or 'unet_256'} has one style"
            )
    return args


def parse_target_columns(parser: argparse.ArgumentParser, values: list[str]) -> tuple[list[str], list[str]]:
    """``--target_column`` values (``COLUMN`` or ``STYLE=COLUMN``) → (style names, columns), in the given order."""
    styles, columns = [], []
    for value in values:
        style, _, column = value.rpartition("=")
        if not column or (value.count("=") and not style):
            parser.error(f"--target_column {value!r}: give COLUMN or STYLE=COLUMN (e.g. ghibli=Ghibli)")
        styles.append(style or column)
        columns.append(column)
    for name, items in (("style", styles), ("column", columns)):
        repeated = sorted({item for item in items if items.count(item) > 1})
        if repeated:
            parser.error(f"--target_column {' '.join(values)}: the {name} {repeated[0]!r} is given twice")
    return styles, columns


def generator_styles(args) -> list[str] | None:
    """The styles the new generator gets: the --target_column names, unless the only one is the default column."""
    if args.target_columns == ["target_image"] and args.styles == ["target_image"]:
        return None
    return args.styles


def build_models(args, accelerator: Accelerator) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The generator (a preset with the flags' overrides, or the checkpoint to fine-tune) and the discriminator
    of the objective; BatchNorm becomes SyncBatchNorm across GPUs."""
    if args.pretrained_model_name_or_path:
        generator = load_generator(args.pretrained_model_name_or_path).train()
        styles = getattr(generator, "styles", None)
        if len(args.target_columns) > 1 and styles != args.styles:
            raise ValueError(
                f"--pretrained_model_name_or_path {args.pretrained_model_name_or_path!r} has the styles {styles}, "
                f"not the --target_column styles {args.styles}: name them in the model's order."
            )
    else:
        overrides = {name: getattr(args, name) for name in GENERATOR_OVERRIDES}
        cls, _ = preset_config(args.preset)
        if "styles" in cls.config_keys():
            overrides["styles"] = generator_styles(args)  # None keeps the preset's
        generator = build_generator(args.preset, **overrides)
    objective_class = OBJECTIVES[args.objective]
    discriminator = build_discriminator(
        args.discriminator_layout or objective_class.discriminator_layout,
        condition_channels=objective_class.discriminator_condition_channels + style_planes(args),
        ndf=args.ndf,
        n_layers=args.n_layers_d,
        norm=args.norm or generator.config.get("norm", "batch"),
    )
    has_batch_norm = any(isinstance(m, torch.nn.BatchNorm2d) for m in [*generator.modules(), *discriminator.modules()])
    if accelerator.num_processes > 1 and has_batch_norm:
        if accelerator.device.type == "cuda":
            generator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(generator)
            discriminator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
        else:
            logger.warning(
                "BatchNorm statistics stay per process on CPU (SyncBatchNorm needs GPUs); use --norm instance."
            )
    if args.channels_last:
        generator, discriminator = (m.to(memory_format=torch.channels_last) for m in (generator, discriminator))
    if args.compile:  # in place: the modules keep their class, state-dict keys and save_pretrained
        generator.compile()
        discriminator.compile()
    return generator, discriminator


def style_planes(args) -> int:
    """One-hot style planes in pix2pix D's condition: one per style when training several (a style-aware cGAN)."""
    return len(args.styles) if args.objective == "pix2pix" and len(args.target_columns) > 1 else 0


def build_objective(args, device: torch.device) -> Objective:
    """The objective the flags describe. CartoonGAN loads VGG19 here, so missing weights fail at start."""
    if args.objective == "pix2pix":
        return Pix2PixObjective(
            gan_mode=args.gan_mode,
            lambda_l1=args.lambda_l1,
            lambda_gradient=args.lambda_gradient,
            lambda_adversarial=args.lambda_adversarial,
            lambda_gradient_distribution=args.lambda_gradient_distribution,
            lambda_mse=args.lambda_mse,
            num_styles=style_planes(args),
        )
    try:
        vgg = VGG19Features.from_pretrained(args.vgg_weights).to(device)
    except RuntimeError as error:
        raise RuntimeError(f"--vgg_weights {args.vgg_weights!r}: {error}") from error
    return CartoonGANObjective(
        vgg=vgg, gan_mode=args.gan_mode, lambda_content=args.lambda_content, init_steps=args.init_steps or 0
    )


def build_datasets(args, edge_smoothing: bool = False) -> tuple[PairedImageDataset, PairedImageDataset]:
    """The training pairs and the whole validation images of the dataset the flags name (`build_pair_datasets`)."""
    return build_pair_datasets(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir,
        split=args.split,
        validation_split=args.validation_split,
        num_validation_rows=args.num_validation_images,
        max_train_samples=args.max_train_samples,
        streaming=args.streaming,
        input_column=args.input_column,
        target_column=args.target_column,
        paired_layout=args.paired_layout,
        direction=args.direction,
        resolution=args.resolution,
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        edge_smoothing=edge_smoothing,
        cache_dir=args.cache_dir,
        seed=args.seed,
        max_unreadable_fraction=args.max_unreadable_fraction,
    )


def default_num_workers(device: torch.device, local_processes: int = 1) -> int:
    """DataLoader workers per process when --dataloader_num_workers is not given: none on CPU (the model needs every
    core; with the decode-once cache a batch costs about a millisecond to load), else the cores per process less
    one (the training loop's), at most 8."""
    if device.type == "cpu":
        return 0
    return max(1, min(8, available_cores() // max(1, local_processes) - 1))


def build_train_dataloader(
    args, train_pairs: PairedImageDataset, accelerator: Accelerator | None = None
) -> torch.utils.data.DataLoader:
    """Shuffled (or brightness-balanced) batches of training pairs, in an order that is a function of the seed and
    the epoch (accelerate's seedable sampler, or the balanced sampler's own): a resumed run sees the same batches.

    With ``--decode_cache`` (a map-style dataset) the batches hold whole resized uint8 pairs of `DecodedPairs` and
    their crop windows, cut on the device by `crop_pairs`; else ready float crops decoded per sample. Workers persist
    across epochs (no re-spawn on small datasets; `PairedImageDataset.set_epoch` reaches them) and batches are pinned
    for the copy to a GPU.
    """
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    dataset, collate, brightness = train_pairs, collate_pairs, None
    if args.streaming:
        dataset = StreamingPairedDataset(train_pairs)
    elif args.decode_cache:
        cache_dir = Path(args.cache_dir) / "ghibligan_decoded" if args.cache_dir else None
        # one process per machine decodes (in several processes for a large dataset), the others read its cache
        with accelerator.local_main_process_first() if accelerator is not None else contextlib.nullcontext():
            dataset = DecodedPairs(train_pairs, cache_dir=cache_dir)
        collate = collate_decoded_pairs
        brightness = dataset.brightness() if args.balance_brightness else None
    sampler = None
    if args.balance_brightness:
        sampler = brightness_balanced_sampler(brightness or dataset_brightness(train_pairs), seed=args.seed)
    num_workers = args.dataloader_num_workers
    if num_workers is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes if accelerator else 1))
        num_workers = default_num_workers(device, local_processes)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=not args.streaming and sampler is None,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )


def device_batch(args, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A loader batch on the device → the training step's (B, 3, R, R) crops in [-1, 1]: decode-cache batches are
    cropped, flipped and normalized here (`crop_pairs`); with --channels_last the crops take that layout."""
    if args.decode_cache and "crop" in batch:
        return crop_pairs(batch, args.resolution, channels_last=args.channels_last)
    if args.channels_last:
        return {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in batch.items()}
    return batch


def main(args: argparse.Namespace) -> None:
    output_dir = Path(args.output_dir)

    # 1. accelerator, logging, seed
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # non_blocking: pinned batches are copied to the GPU while it still works on the previous step
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed, non_blocking=True),
    )
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "fp16":
        raise ValueError("fp16 mixed precision needs a GPU; on CPU use --mixed_precision bf16.")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    resume_from = resume_candidates(output_dir, args.resume_from_checkpoint)  # now: a bad path fails at once

    # 2. models and the objective (CartoonGAN's VGG fails here, at start, if its weights are missing)
    generator, discriminator = build_models(args, accelerator)
    objective = build_objective(args, accelerator.device)

    # 3. optimizers
    def adam(model):
        return torch.optim.Adam(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))

    optimizer_g, optimizer_d = adam(generator), adam(discriminator)

    # 4. data: training crops, whole validation images, and warm starts for a new tone head and level quantizer
    train_pairs, validation_pairs = build_datasets(args, edge_smoothing=objective.needs_smoothed_targets)
    validation_images = load_validation_images(args, accelerator, validation_pairs)
    # a new model's warm starts, on the same crops (a fine-tuned or resumed model is trained already)
    tone_head = getattr(generator, "tone_head", None) if args.tone_head_init_steps else None
    quantizer = getattr(generator, "level_quantizer", None)
    smoother = getattr(generator, "photo_smoother", None)
    new_model = not (args.pretrained_model_name_or_path or resume_from)
    if new_model and (tone_head is not None or quantizer is not None or smoother is not None):
        samples = tone_head_samples(train_pairs, args.streaming, seed=args.seed)
        names = getattr(generator, "styles", None) or ["target"]
        if smoother is not None:
            fitted = fit_detail_weights(generator, samples)
            logger.info("Detail weights: " + ", ".join(f"{names[style]} {w:.2f}" for style, w in fitted.items()))
        if tone_head is not None:
            loss = fit_tone_head(tone_head, samples, args.tone_head_init_steps, args.seed)
            logger.info(f"Tone head fitted to the training pairs pixel by pixel: L1 {loss:.4f}")
        if quantizer is not None:
            for style, (levels, concentration) in fit_level_quantizer(quantizer, samples).items():
                logger.info(
                    f"Levels of {names[style]!r} ({quantizer.space}): {levels:.2f} (concentration {concentration:.2f})"
                )
    train_dataloader = accelerator.prepare(build_train_dataloader(args, train_pairs, accelerator))  # sharded

    # 5. schedule, in optimizer steps per process (None per epoch: a stream has no length)
    steps_per_epoch = None if args.streaming else math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_pairs)} training rows make no full batch of {args.train_batch_size} on each of "
            f"{accelerator.num_processes} processes: lower --train_batch_size or add data."
        )
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    if args.init_epochs is not None:
        objective = dataclasses.replace(objective, init_steps=args.init_epochs * steps_per_epoch)
    # accelerate steps a prepared scheduler once per process per optimizer step: count in those units
    decay_start = None if args.lr_decay_start is None else args.lr_decay_start * accelerator.num_processes
    schedule = lr_lambda(args.lr_scheduler, max_train_steps * accelerator.num_processes, decay_start)
    scheduler_g = torch.optim.lr_scheduler.LambdaLR(optimizer_g, schedule)
    scheduler_d = torch.optim.lr_scheduler.LambdaLR(optimizer_d, schedule)

    # 6. prepare: DDP, devices, mixed precision
    generator, discriminator, optimizer_g, optimizer_d, scheduler_g, scheduler_d = accelerator.prepare(
        generator, discriminator, optimizer_g, optimizer_d, scheduler_g, scheduler_d
    )

    # 7. trackers (main process), with the arguments as the run's config
    if accelerator.is_main_process and args.report_to != "none":
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name, config=config)

    # 8. resume: models, optimizers, schedulers, scaler, sampler and RNG states from the newest intact checkpoint
    global_step = 0
    resume_path = load_checkpoint(accelerator, resume_from)  # a damaged one is named and skipped
    if resume_path is not None:
        global_step = checkpoint_step(resume_path)
        logger.info(f"Resuming from checkpoint {resume_path.name} (step {global_step})")
    elif args.resume_from_checkpoint:
        logger.info(f"No checkpoint to resume from in {output_dir} yet: starting a new run.")

    # 9. the loop
    content_only = sum(not objective.is_adversarial(step) for step in range(max_train_steps))
    logger.info(
        f"Training {objective.description} for {max_train_steps} steps ({content_only} content-only), batch "
        f"{args.train_batch_size} × {accelerator.num_processes} processes × {args.gradient_accumulation_steps} "
        f"accumulation, resolution {args.resolution}"
    )
    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    values, skipped_updates = {}, 0
    epoch = global_step // steps_per_epoch if steps_per_epoch else 0
    resume_batches = (global_step % steps_per_epoch) * args.gradient_accumulation_steps if steps_per_epoch else 0
    batch_index = global_step * args.gradient_accumulation_steps  # micro-batches done: keys the step's randomness
    while global_step < max_train_steps:
        train_dataloader.set_epoch(epoch)  # the sampler's order
        train_pairs.set_epoch(epoch)  # the crops, in the DataLoader workers too (accelerate tells the dataset only
        # when there is no sampler)
        batches = (
            accelerator.skip_first_batches(train_dataloader, resume_batches) if resume_batches else train_dataloader
        )
        resume_batches = 0
        for batch in batches:
            batch = device_batch(args, batch)  # decode-cache batches: crops, flips, [-1, 1] on the device
            seed_step(args.seed, accelerator.process_index, batch_index)  # dropout: the same after a resume
            batch_index += 1
            logs = training_step(
                accelerator, objective, generator, discriminator, (optimizer_g, optimizer_d),
                (scheduler_g, scheduler_d), batch, global_step, args.max_grad_norm, args.skip_nonfinite_steps,
            )  # fmt: skip
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            values = {k: accelerator.reduce(v.float(), "mean").item() for k, v in logs.items()}
            values["lr"] = scheduler_g.get_last_lr()[0]
            if "skipped_d" in values or "skipped_g" in values:
                skipped_updates += 1
                logger.warning(f"Step {global_step}: a loss is not finite, its update was dropped: {values}")
            progress.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k != "lr"})
            accelerator.log(values, step=global_step)

            if global_step % args.checkpointing_steps == 0:
                unwrapped = accelerator.unwrap_model(generator)
                path = save_checkpoint(accelerator, output_dir, global_step, unwrapped, args.checkpoints_total_limit)
                logger.info(f"Saved {path.name}")
            if global_step % args.validation_steps == 0 and global_step < max_train_steps:
                run_validation(args, accelerator, generator, validation_images, global_step)
            if global_step >= max_train_steps:
                break
        epoch += 1
    progress.close()
    if skipped_updates:
        logger.warning(f"{skipped_updates} steps had a non-finite loss and dropped an update (--skip_nonfinite_steps).")

    # 10. check that every process holds the same weights, save and push (main process only), then validate: a
    # failing validation can no longer cost the model
    check_identical_weights(accelerator, generator)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final_model(args, accelerator, objective, generator, discriminator, values, global_step)
    run_validation(args, accelerator, generator, validation_images, global_step)
    # the other processes wait out the main one's validation: a process that tears the process group down while a
    # peer still holds it can abort at exit ("terminate called without an active exception", seen once in CI)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def check_identical_weights(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Raise if DDP let the processes' copies of ``model`` drift apart (compares a checksum of the weights)."""
    checksum = torch.stack([p.detach().float().sum() for p in accelerator.unwrap_model(model).parameters()]).sum()
    checksums = accelerator.gather(checksum.reshape(1).to(accelerator.device))
    if not torch.allclose(checksums, checksums[0].expand_as(checksums)):
        raise RuntimeError(f"Weights differ between processes: checksums {checksums.tolist()}")
    logger.info(f"Weights identical on all {accelerator.num_processes} processes (checksum {checksums[0].item():.6f})")


def load_validation_images(args, accelerator: Accelerator, validation_pairs: PairedImageDataset) -> dict:
    """The whole validation images of each style (``None``: a one-style run), on the main process (others: {}). An
    error here is reported, not raised: a run without validation images still trains and saves."""
    if not accelerator.is_main_process:
        return {}
    styles = args.styles if validation_pairs.num_styles > 1 else [None]
    try:
        return {
            style: validation_pairs.whole_pairs(args.num_validation_images, style=index)
            for index, style in enumerate(styles)
        }
    except Exception:  # validation must never cost the run; reported in full
        logger.exception("Cannot read the validation images: training goes on without validation.")
        return {}


def run_validation(args, accelerator: Accelerator, generator, pairs: dict, step: int) -> None:
    """`log_validation` of each style on the main process; any error in it is reported with its traceback and
    training goes on."""
    if not accelerator.is_main_process:
        return
    if not any(pairs.values()):
        logger.warning("No readable validation images: skipping validation.")
        return
    for style, style_pairs in pairs.items():
        try:
            log_validation(args, accelerator, generator, style_pairs, step, style)
        except Exception:  # validation must never cost the run; reported in full
            logger.exception(f"Validation at step {step} failed: training goes on, and the model is saved regardless.")


def log_validation(args, accelerator: Accelerator, generator, pairs: list, step: int, style: str | None) -> None:
    """Cartoonize the whole validation images (in ``style``, for a multi-style run); save the (photo | output |
    target) grid and log it with L1 / PSNR (under ``val/STYLE/`` for a style)."""
    grid, metrics = validate(
        accelerator.unwrap_model(generator),
        pairs,
        accelerator.device,
        args.validation_max_side,
        args.resolution,
        style=style,
    )
    if style is not None:
        metrics = {name.replace("val/", f"val/{style}/"): value for name, value in metrics.items()}
    suffix = f"-{style}" if style is not None else ""
    (Path(args.output_dir) / "validation").mkdir(parents=True, exist_ok=True)
    grid.save(Path(args.output_dir) / "validation" / f"step-{step:07d}{suffix}.png")
    accelerator.log(metrics, step=step)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np

            tracker.writer.add_image(f"validation{suffix}", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({f"validation{suffix}": [wandb.Image(grid, caption="photo | output | target")]}, step=step)
    logger.info(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


def save_final_model(
    args, accelerator: Accelerator, objective: Objective, generator, discriminator, final_losses: dict, steps: int
) -> None:
    """G into output_dir (config.json, model.safetensors, model card), D into output_dir/discriminator; push."""
    output_dir = Path(args.output_dir)
    generator = accelerator.unwrap_model(generator)  # SyncBatchNorm keys are BatchNorm2d's: it reloads as such
    source = args.dataset_name or Path(args.train_data_dir).name
    details = "\n".join(
        [
            "| | |",
            "| --- | --- |",
            f"| dataset | `{source}` (`{args.input_column}` → {', '.join(f'`{c}`' for c in args.target_columns)}) |",
            f"| objective | {objective.description} |",
            f"| steps | {steps} × batch {args.train_batch_size} × {accelerator.num_processes} processes |",
            f"| resolution | {args.resolution} |",
            f"| mixed precision | {accelerator.mixed_precision} |",
            f"| final losses | {', '.join(f'{k} {v:.4g}' for k, v in final_losses.items() if k != 'lr')} |",
            "",
            f"Trained with `accelerate launch train_accelerate.py {' '.join(sys.argv[1:])}`.",
        ]
    )
    card = {"description": f"a {args.objective} generator trained on `{source}`.", "training_details": details}
    if args.push_to_hub:
        card["repo_id"] = args.hub_model_id or output_dir.name
    (output_dir / "README.md").unlink(missing_ok=True)
    generator.save_pretrained(output_dir, model_card_kwargs=card)
    accelerator.unwrap_model(discriminator).save_pretrained(output_dir / "discriminator")
    (output_dir / "training_args.json").write_text(json.dumps(vars(args), indent=2, default=str))
    logger.info(f"Saved the generator to {output_dir} and the discriminator to {output_dir / 'discriminator'}")
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=args.hub_token)
        repo_id = api.create_repo(args.hub_model_id or output_dir.name, exist_ok=True).repo_id
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(output_dir),
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", "logs/**", "validation/**", "*.tmp"],
            commit_message=f"ghibligan: {args.objective} generator, {steps} steps",
        )
        logger.info(f"Pushed to https://huggingface.co/{repo_id}")


if __name__ == "__main__":
    main(parse_args())
