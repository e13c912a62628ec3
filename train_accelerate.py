#!/usr/bin/env python
"""Train a ghibligan generator (Pix2Pix or CartoonGAN objective) on paired images, with 🤗 accelerate.

Examples:

    # Pix2Pix on pairs made by `ghibligan make-pairs` (one CPU or GPU)
    accelerate launch train_accelerate.py --train_data_dir pairs/ --output_dir toon-unet \\
        --generator unet --ngf 32 --resolution 256 --train_batch_size 4 --max_train_steps 20000 \\
        --checkpointing_steps 1000 --validation_steps 500 --mixed_precision bf16

    # A Hub pairs dataset whose columns are named differently, pushed to the Hub at the end
    accelerate launch --multi_gpu --num_processes 8 train_accelerate.py \\
        --dataset_name you/ghibli-pairs --input_column raw --target_column Ghibli \\
        --output_dir ghibli-unet --push_to_hub --hub_model_id you/ghibli-unet

    # CartoonGAN: content-only initialization, then edge-promoting adversarial training
    accelerate launch train_accelerate.py --objective cartoongan --generator resnet --train_data_dir pairs/ \\
        --vgg_weights vgg19/model.safetensors --init_steps 2000 --max_train_steps 40000 --output_dir cartoongan

    # Resume a run that stopped (or crashed) from its newest checkpoint
    accelerate launch train_accelerate.py ... --output_dir toon-unet --resume_from_checkpoint latest

Two CPU processes (a real DDP run without a GPU):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 train_accelerate.py ...
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ghibligan.data import (
    PairedImageDataset,
    PairTransform,
    StreamingPairedDataset,
    brightness_balanced_sampler,
    collate_pairs,
    dataset_brightness,
    load_pairs_dataset,
)
from ghibligan.losses import GAN_MODES, content_loss, discriminator_loss, generator_adversarial_loss
from ghibligan.models.vgg import DEFAULT_VGG19_WEIGHTS, VGG19Features
from ghibligan.training import (
    build_discriminator,
    build_generator,
    checkpoint_step,
    fit_tone_head,
    lr_lambda,
    resolve_resume,
    save_checkpoint,
    tone_head_samples,
    validation_grid,
)

logger = get_logger(__name__)


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
    data.add_argument("--target_column", default="target_image", help="Column of the targets (default: target_image).")
    data.add_argument(
        "--paired_layout",
        default="separate",
        choices=["separate", "side_by_side"],
        help="'side_by_side': one image per row holding A|B, as in the pix2pix datasets (read from --input_column).",
    )
    data.add_argument("--direction", default="AtoB", choices=["AtoB", "BtoA"], help="With side_by_side: A→B or B→A.")
    data.add_argument(
        "--validation_split",
        default=None,
        help="A fraction of the training rows held out for validation (e.g. 0.05), or the name of a split "
        "(default: the dataset's 'validation' split if it has one, else 0.05).",
    )
    data.add_argument("--num_validation_images", type=int, default=4, help="Rows in the validation grid (4).")
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
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes (0).")
    data.add_argument("--cache_dir", default=None, help="Where datasets caches downloads.")

    model = parser.add_argument_group("model")
    model.add_argument("--objective", default="pix2pix", choices=["pix2pix", "cartoongan"], help="Training objective.")
    model.add_argument(
        "--generator", default="unet", choices=["unet", "resnet"], help="U-Net (pix2pix) or ResNet (CartoonGAN)."
    )
    model.add_argument(
        "--pretrained_model_name_or_path", default=None, help="Fine-tune this generator checkpoint (folder or Hub id)."
    )
    model.add_argument("--ngf", type=int, default=64, help="Generator width (64).")
    model.add_argument("--num_downs", type=int, default=8, help="U-Net depth (8 = unet_256).")
    model.add_argument("--norm", default="batch", choices=["batch", "instance", "none"], help="Norm layers (batch).")
    model.add_argument("--dropout", type=float, default=0.5, help="U-Net decoder dropout (0.5).")
    model.add_argument(
        "--innermost_kernel", type=int, default=4, help="U-Net last encoder kernel (4; the seed used 5)."
    )
    model.add_argument("--attention_heads", type=int, default=0, help="U-Net bottleneck attention heads (0 = off).")
    model.add_argument(
        "--up_activation", default="relu", choices=["relu", "leaky_relu"], help="U-Net decoder activation."
    )
    model.add_argument("--upsample", default="transpose", choices=["transpose", "resize"], help="Upsampling layers.")
    model.add_argument(
        "--residual", action="store_true", help="U-Net predicts the change to the photo, not the image (keeps detail)."
    )
    model.add_argument(
        "--full_res_channels",
        type=int,
        default=0,
        help="U-Net full-resolution path of this many channels (0 = pix2pix layout; the first conv has stride 2).",
    )
    model.add_argument(
        "--tone_head_channels",
        type=int,
        default=0,
        help="U-Net per-pixel colour MLP of this width on the output: learns sharp tone curves (flat levels). 0 = off.",
    )
    model.add_argument(
        "--tone_head_init_steps",
        type=int,
        default=3000,
        help="Fit the tone head pixel by pixel to the training pairs for this many steps before training (seconds).",
    )
    model.add_argument("--n_blocks", type=int, default=8, help="ResNet residual blocks (8).")
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
    optim.add_argument("--seed", type=int, default=0, help="Random seed (0).")

    run = parser.add_argument_group("checkpoints, logging, output")
    run.add_argument("--output_dir", required=True, help="Checkpoints, logs, validation grids and the final model.")
    run.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save the training state every N steps (500)."
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
    if args.resolution % 8 or args.resolution < 32:
        parser.error(f"--resolution must be a multiple of 8 and >= 32, got {args.resolution}")
    if args.objective == "cartoongan" and args.init_steps is not None and args.init_epochs is not None:
        parser.error("give --init_steps or --init_epochs, not both")
    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "validation_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def main(args: argparse.Namespace) -> None:
    output_dir = Path(args.output_dir)

    # 1. accelerator, logging, seed
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "fp16":
        raise ValueError("fp16 mixed precision needs a GPU; on CPU use --mixed_precision bf16.")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    resume_path = resolve_resume(output_dir, args.resume_from_checkpoint)  # resolved now: a bad path fails at once

    # 2. models: G, D, and VGG for CartoonGAN's content loss (fails here, at start, if its weights are missing)
    generator, discriminator = build_generator(args), build_discriminator(args)
    vgg = (
        VGG19Features.from_pretrained(args.vgg_weights).to(accelerator.device)
        if args.objective == "cartoongan"
        else None
    )
    if accelerator.num_processes > 1 and args.norm == "batch":
        if accelerator.device.type == "cuda":
            generator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(generator)
            discriminator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
        else:
            logger.warning(
                "BatchNorm statistics stay per process on CPU (SyncBatchNorm needs GPUs); use --norm instance."
            )

    # 3. optimizers
    def adam(model):
        return torch.optim.Adam(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))

    optimizer_g, optimizer_d = adam(generator), adam(discriminator)

    # 4. data
    splits = load_pairs_dataset(
        args.dataset_name, args.dataset_config_name, args.train_data_dir, args.split, args.streaming,
        args.input_column, args.target_column, args.cache_dir,
    )  # fmt: skip
    if args.split not in splits:
        raise ValueError(f"--split {args.split!r} not in the dataset's splits {list(splits)}.")
    train_rows = splits[args.split]
    validation_split = args.validation_split or ("validation" if "validation" in splits else "0.05")
    try:
        fraction = float(validation_split)
    except ValueError:
        fraction = None
    if fraction is None:
        if validation_split not in splits:
            raise ValueError(f"--validation_split {validation_split!r}: no such split in {list(splits)}.")
        validation_rows = splits[validation_split]
    elif args.streaming:
        validation_rows = train_rows.take(args.num_validation_images)
    elif 1 <= round(fraction * len(train_rows)) < len(train_rows):
        parts = train_rows.train_test_split(test_size=round(fraction * len(train_rows)), seed=args.seed)
        train_rows, validation_rows = parts["train"], parts["test"]
    else:
        logger.warning("No rows held out for validation: the validation grid shows training rows.")
        validation_rows = train_rows
    if args.max_train_samples is not None:
        train_rows = (
            train_rows.take(args.max_train_samples)
            if args.streaming
            else train_rows.select(range(min(args.max_train_samples, len(train_rows))))
        )
    pair_kwargs = dict(
        input_column=args.input_column,
        target_column=args.target_column,
        paired_layout=args.paired_layout,
        direction=args.direction,
        edge_smoothing=args.objective == "cartoongan",
    )
    train_pairs = PairedImageDataset(
        train_rows, transform=PairTransform(args.resolution, args.center_crop, args.random_flip), **pair_kwargs
    )
    validation_pairs = PairedImageDataset(
        validation_rows, transform=PairTransform(args.resolution, center_crop=True), **pair_kwargs
    )
    # warm start of a new tone head (a fine-tuned or resumed one has its weights already)
    tone_head = getattr(generator, "tone_head", None)
    if tone_head is not None and args.tone_head_init_steps and not (args.pretrained_model_name_or_path or resume_path):
        samples = tone_head_samples(train_pairs, args.streaming, seed=args.seed)
        loss = fit_tone_head(tone_head, samples, args.tone_head_init_steps, args.seed)
        logger.info(f"Tone head fitted to the training pairs pixel by pixel: L1 {loss:.4f}")
    sampler = None
    if args.balance_brightness:
        sampler = brightness_balanced_sampler(dataset_brightness(train_pairs), seed=args.seed)
    train_dataloader = torch.utils.data.DataLoader(
        StreamingPairedDataset(train_pairs) if args.streaming else train_pairs,
        batch_size=args.train_batch_size,
        shuffle=not args.streaming and sampler is None,
        sampler=sampler,
        collate_fn=collate_pairs,
        num_workers=args.dataloader_num_workers,
        drop_last=True,
    )

    # 5. schedule: steps per epoch, total steps, CartoonGAN's initialization phase
    if not args.streaming and len(train_dataloader) < accelerator.num_processes:
        raise ValueError(
            f"{len(train_pairs)} training rows make no full batch of {args.train_batch_size} on each of "
            f"{accelerator.num_processes} processes: lower --train_batch_size or add data."
        )
    steps_per_epoch = (
        None
        if args.streaming
        else math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    )
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    init_steps = 0
    if args.objective == "cartoongan":
        init_steps = (
            args.init_steps if args.init_steps is not None else (args.init_epochs or 0) * (steps_per_epoch or 0)
        )
    # accelerate steps a prepared scheduler once per process per optimizer step: count in those units
    decay_start = None if args.lr_decay_start is None else args.lr_decay_start * accelerator.num_processes
    schedule = lr_lambda(args.lr_scheduler, max_train_steps * accelerator.num_processes, decay_start)
    scheduler_g = torch.optim.lr_scheduler.LambdaLR(optimizer_g, schedule)
    scheduler_d = torch.optim.lr_scheduler.LambdaLR(optimizer_d, schedule)

    # 6. prepare: DDP, devices, mixed precision, sharded data
    generator, discriminator, optimizer_g, optimizer_d, train_dataloader, scheduler_g, scheduler_d = (
        accelerator.prepare(
            generator, discriminator, optimizer_g, optimizer_d, train_dataloader, scheduler_g, scheduler_d
        )
    )

    # 7. trackers (main process), with the arguments as the run's config
    if accelerator.is_main_process and args.report_to != "none":
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name, config=config)

    # 8. resume: models, optimizers, schedulers, scaler and RNG states from the newest complete checkpoint
    global_step = 0
    if resume_path is not None:
        accelerator.load_state(str(resume_path))
        global_step = checkpoint_step(resume_path)
        logger.info(f"Resuming from checkpoint {resume_path.name} (step {global_step})")
    elif args.resume_from_checkpoint:
        logger.info("No checkpoint to resume from in %s yet: starting a new run.", output_dir)

    # 9. the loop (per-process batches per epoch, now that prepare() sharded the data)
    if steps_per_epoch:
        steps_per_epoch = max(1, len(train_dataloader) // args.gradient_accumulation_steps)
    validation_batch = next(iter(torch.utils.data.DataLoader(
        validation_pairs, batch_size=args.num_validation_images, collate_fn=collate_pairs
    )))  # fmt: skip
    logger.info(
        f"Training {args.objective} for {max_train_steps} steps ({init_steps} content-only), batch "
        f"{args.train_batch_size} × {accelerator.num_processes} processes × {args.gradient_accumulation_steps} "
        f"accumulation, resolution {args.resolution}"
    )
    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    unwrapped_d = accelerator.unwrap_model(discriminator)
    skipped, logs, values = 0, {}, {}

    def optimizer_step(model, optimizer, scheduler) -> None:
        """Clip (when asked), step, schedule, zero. Under accumulate(), accelerate skips all but the last micro-step."""
        if accelerator.sync_gradients and args.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    epoch = global_step // steps_per_epoch if steps_per_epoch else 0
    resume_batches = (global_step % steps_per_epoch) * args.gradient_accumulation_steps if steps_per_epoch else 0
    while global_step < max_train_steps:
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(epoch)
        batches = (
            accelerator.skip_first_batches(train_dataloader, resume_batches) if resume_batches else train_dataloader
        )
        resume_batches = 0
        for batch in batches:
            skipped += batch.pop("skipped")
            if "input" not in batch:  # every sample of this batch was unreadable
                continue
            photo, target = batch["input"], batch["target"]  # (B, 3, R, R) in [-1, 1]
            adversarial = args.objective == "pix2pix" or global_step >= init_steps
            with accelerator.accumulate(generator, discriminator):
                fake = generator(photo)

                # D step: real pairs/cartoons → real, G's outputs (and smoothed-edge cartoons) → fake
                if adversarial:
                    if args.objective == "pix2pix":
                        real_logits = discriminator(target, photo)
                        fake_logits = [discriminator(fake.detach(), photo)]
                    else:
                        real_logits = discriminator(target)
                        fake_logits = [discriminator(fake.detach()), discriminator(batch["target_smoothed"])]
                    loss_d = discriminator_loss(real_logits, fake_logits, args.gan_mode)
                    accelerator.backward(loss_d)
                    optimizer_step(discriminator, optimizer_d, scheduler_d)
                    logs["loss_d"] = loss_d.detach()

                # G step, with D frozen (and used unwrapped, so DDP does not wait for D gradients)
                unwrapped_d.requires_grad_(False)
                loss_g = torch.zeros((), device=accelerator.device)
                with accelerator.autocast():  # the unwrapped D and VGG are outside prepare()'s autocast
                    if adversarial:
                        fake_logits = unwrapped_d(fake, photo) if args.objective == "pix2pix" else unwrapped_d(fake)
                        logs["loss_g_gan"] = generator_adversarial_loss(fake_logits.float(), args.gan_mode)
                        loss_g = loss_g + logs["loss_g_gan"]
                    if args.objective == "pix2pix":
                        logs["loss_g_l1"] = torch.nn.functional.l1_loss(fake.float(), target)
                        loss_g = loss_g + args.lambda_l1 * logs["loss_g_l1"]
                    else:
                        logs["loss_g_content"] = content_loss(vgg, fake, photo).float()
                        loss_g = loss_g + args.lambda_content * logs["loss_g_content"]
                accelerator.backward(loss_g)
                unwrapped_d.requires_grad_(True)
                optimizer_step(generator, optimizer_g, scheduler_g)

            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            values = {k: accelerator.reduce(v.detach().float(), "mean").item() for k, v in logs.items()}
            values["lr"] = scheduler_g.get_last_lr()[0]
            progress.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k != "lr"})
            accelerator.log(values, step=global_step)

            if global_step % args.checkpointing_steps == 0:
                path = save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
                logger.info(f"Saved {path.name}")
            if accelerator.is_main_process and (
                global_step % args.validation_steps == 0 or global_step == max_train_steps
            ):
                log_validation(accelerator, generator, validation_batch, output_dir, global_step)
            if global_step >= max_train_steps:
                break
        epoch += 1
    progress.close()
    if skipped:
        logger.warning(f"{skipped} unreadable samples were skipped (each named in a warning above).")

    # 10. check that every process holds the same weights, then save and push (main process only)
    checksum = torch.stack([p.detach().float().sum() for p in accelerator.unwrap_model(generator).parameters()]).sum()
    checksums = accelerator.gather(checksum.reshape(1).to(accelerator.device))
    if not torch.allclose(checksums, checksums[0].expand_as(checksums)):
        raise RuntimeError(f"Generator weights differ between processes: checksums {checksums.tolist()}")
    logger.info(
        f"Generator weights identical on all {accelerator.num_processes} processes (checksum {checksums[0].item():.6f})"
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final_model(args, accelerator, generator, discriminator, values, global_step)
    accelerator.end_training()


def log_validation(accelerator, generator, batch, output_dir: Path, step: int) -> None:
    """Save the (input | output | target) grid and log it with the validation metrics."""
    device = accelerator.device
    with accelerator.autocast():
        grid, metrics = validation_grid(
            accelerator.unwrap_model(generator), batch["input"].to(device), batch["target"].to(device)
        )
    (output_dir / "validation").mkdir(parents=True, exist_ok=True)
    grid.save(output_dir / "validation" / f"step-{step:07d}.png")
    accelerator.log(metrics, step=step)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np

            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(grid, caption="input | output | target")]}, step=step)
    logger.info(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


def save_final_model(args, accelerator, generator, discriminator, final_losses: dict, steps: int) -> None:
    """G into output_dir (config.json, model.safetensors, model card), D into output_dir/discriminator; push."""
    output_dir = Path(args.output_dir)
    generator = accelerator.unwrap_model(generator)  # SyncBatchNorm keys are BatchNorm2d's: it reloads as such
    source = args.dataset_name or Path(args.train_data_dir).name
    details = "\n".join(
        [
            "| | |",
            "| --- | --- |",
            f"| dataset | `{source}` (`{args.input_column}` → `{args.target_column}`) |",
            f"| objective | {args.objective} ({args.gan_mode} GAN"
            + (f", λ_L1 = {args.lambda_l1:g})" if args.objective == "pix2pix" else f", ω = {args.lambda_content:g})")
            + " |",
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
