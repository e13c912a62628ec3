"""Pieces of the training run that `train_accelerate.py` composes: models from arguments, the learning-rate schedule,
atomic checkpoints with a total limit, resumption, and validation grids.

Checkpoints are ``output_dir/checkpoint-{step}`` folders written by `Accelerator.save_state` (models, optimizers,
schedulers, grad scaler, every process's RNG state). They are written under a ``.tmp`` name and renamed once complete,
so an interrupted save never becomes "latest".
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import StreamingPairedDataset
from .image_io import tensor_to_uint8
from .models import PatchDiscriminator, ResNetGenerator, UNetGenerator, load_generator

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def build_generator(args) -> torch.nn.Module:
    """The generator the arguments ask for, or the one at ``--pretrained_model_name_or_path`` to fine-tune."""
    if args.pretrained_model_name_or_path:
        return load_generator(args.pretrained_model_name_or_path).train()
    if args.generator == "resnet":
        return ResNetGenerator(ngf=args.ngf, n_blocks=args.n_blocks, norm=args.norm, upsample=args.upsample)
    return UNetGenerator(
        num_downs=args.num_downs,
        ngf=args.ngf,
        norm=args.norm,
        dropout=args.dropout,
        innermost_kernel=args.innermost_kernel,
        attention_heads=args.attention_heads,
        up_activation=args.up_activation,
        upsample=args.upsample,
        residual=args.residual,
        full_res_channels=args.full_res_channels,
        tone_head_channels=args.tone_head_channels,
    )


def tone_head_samples(pairs, streaming: bool, count: int = 256, seed: int = 0) -> list[dict]:
    """``count`` random crops of the training pairs (the first ``count`` rows when streaming), unreadable ones left
    out. Drawn with ``seed`` and the global torch RNG that `set_seed` seeded: the same on every process."""
    if streaming:
        return [s for s in itertools.islice(iter(StreamingPairedDataset(pairs)), count) if s is not None]
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(len(pairs), (count,), generator=generator).tolist()
    return [sample for sample in (pairs[i] for i in indices) if sample is not None]


def fit_tone_head(
    tone_head: torch.nn.Module, samples: list[dict], steps: int, seed: int = 0, learning_rate: float = 1e-2
) -> float:
    """Fit a generator's per-pixel tone head to training pairs pixel by pixel (photo colour → target colour).

    A warm start for ``UNetGenerator(tone_head_channels=N)``: the teacher's colour mapping (grading, flat levels) is
    mostly a function of each pixel's own colour, which a small MLP learns in seconds, while a U-Net — whose only
    full-resolution nonlinearity is its final tanh — learns it slowly and coarsely. Joint training then refines the
    head on the U-Net's outputs. Returns the final L1 loss.
    """
    if not samples:
        raise ValueError("fit_tone_head: no readable training pairs to fit the tone head on.")
    photos = torch.cat([sample["input"].flatten(1).T for sample in samples])  # (pixels, 3) in [-1, 1]
    targets = torch.cat([sample["target"].flatten(1).T for sample in samples])
    device = next(tone_head.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(tone_head.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=learning_rate / 10)
    loss = torch.zeros(())
    for _ in range(steps):
        batch = torch.randint(len(photos), (16384,), generator=generator)
        photo, target = (t[batch].T[None, :, :, None].to(device) for t in (photos, targets))  # a (1, 3, N, 1) image
        loss = torch.nn.functional.l1_loss(tone_head(photo), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return loss.item()


def build_discriminator(args) -> PatchDiscriminator:
    """pix2pix: conditional 70×70 PatchGAN; CartoonGAN: its own unconditional layout (unless overridden)."""
    layout = args.discriminator_layout or ("cartoongan" if args.objective == "cartoongan" else "pix2pix")
    return PatchDiscriminator(
        condition_channels=3 if args.objective == "pix2pix" else 0,
        ndf=args.ndf,
        n_layers=args.n_layers_d,
        norm=args.norm,
        layout=layout,
    )


def lr_lambda(schedule: str, total_steps: int, decay_start: int | None):
    """Multiplier of the base learning rate at each step: constant, or pix2pix's constant-then-linear-to-zero."""
    if schedule == "constant":
        return lambda step: 1.0
    start = total_steps // 2 if decay_start is None else decay_start
    return lambda step: 1.0 - max(0, step - start) / max(1, total_steps - start + 1)


# -- checkpoints -----------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-{step}`` folders, oldest first (``.tmp`` folders of interrupted saves are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def checkpoint_step(path: str | Path) -> int:
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if not match:
        raise ValueError(f"{str(path)!r} is not a checkpoint folder (expected a name like checkpoint-500).")
    return int(match.group(1))


def resolve_resume(output_dir: str | Path, resume_from_checkpoint: str | None) -> Path | None:
    """``latest`` → the newest complete checkpoint in ``output_dir`` (None if there is none yet), else that path."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a folder.")
    checkpoint_step(path)
    return path


def save_checkpoint(accelerator, output_dir: str | Path, step: int, total_limit: int | None) -> Path:
    """Save the full training state atomically, then delete the oldest checkpoints beyond ``total_limit``."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process writes its RNG state here
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


# -- validation ------------------------------------------------------------------------------------------------------


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB between images in [-1, 1] (peak-to-peak 2)."""
    mse = torch.mean((prediction.float() - target.float()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


@torch.no_grad()
def validation_grid(
    generator: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[Image.Image, dict[str, float]]:
    """Rows of (input | output | target) and the outputs' L1 / PSNR to the targets (and the inputs' own, for scale)."""
    was_training = generator.training
    generator.eval()
    outputs = generator(inputs).float().clamp(-1, 1)
    generator.train(was_training)
    rows = [
        np.concatenate([tensor_to_uint8(inputs[i]), tensor_to_uint8(outputs[i]), tensor_to_uint8(targets[i])], axis=1)
        for i in range(len(inputs))
    ]
    metrics = {
        "val/l1": torch.mean(torch.abs(outputs - targets.float())).item(),
        "val/psnr": psnr(outputs, targets),
        "val/psnr_input": psnr(inputs, targets),
    }
    return Image.fromarray(np.concatenate(rows, axis=0)), metrics
