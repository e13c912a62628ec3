"""The training loop's pieces, composed by `train_accelerate.py`: one GAN step, the tone head's warm start, the
learning-rate schedule, and validation through the `Cartoonizer` on whole images.

`training_step` is the pix2pix recipe (Isola et al., 2017) for any objective of `ghibligan.losses`: a D step on real
and fake, then a G step with D frozen. A loss that is not finite on any process stops the run with
`NonFiniteLossError` before it reaches the weights (or skips that update, on every process alike).
`seed_step` makes the step's randomness (dropout) a function of the seed, the process and the batch, so a resumed run
repeats an uninterrupted one exactly. Checkpoints live in `ghibligan.checkpoints`.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from .data import StreamingPairedDataset
from .image_io import pil_to_tensor, resize_to_max_side
from .losses import Objective
from .models.guided import LevelQuantizer, StyleColorMap, estimate_levels
from .pipeline import Cartoonizer


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite: the step it happened at and the terms are in the message."""


def nonfinite_terms(accelerator, logs: dict[str, torch.Tensor]) -> list[str]:
    """The loss terms of ``logs`` that are NaN or infinite on at least one process. Every process must call it (one
    small all-reduce) and gets the same answer, so all of them stop or skip together."""
    flags = torch.stack([(~torch.isfinite(value.detach().float())).any().float() for value in logs.values()])
    flags = accelerator.reduce(flags.to(accelerator.device), "sum")
    return [name for name, flag in zip(logs, flags.tolist(), strict=True) if flag > 0]


def seed_step(seed: int, process_index: int, batch_index: int) -> None:
    """Seed torch's global RNG (dropout's) from ``(seed, process, batch)``: a resumed run draws what an uninterrupted
    one drew at that batch, whatever else (data loading, validation) used the RNG in between."""
    torch.manual_seed(int(np.random.default_rng([seed, process_index, batch_index]).integers(2**63)))


def training_step(
    accelerator,
    objective: Objective,
    generator: nn.Module,
    discriminator: nn.Module,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    schedulers: tuple[torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.LRScheduler],
    batch: dict[str, torch.Tensor],
    step: int,
    max_grad_norm: float = 0.0,
    skip_nonfinite: bool = False,
) -> dict[str, torch.Tensor]:
    """One GAN step on ``batch`` (one micro-step under gradient accumulation): D on real and fake, then G with D frozen.

    Args:
        accelerator (`accelerate.Accelerator`): the run's accelerator; the models, optimizers and schedulers are the
            ones it prepared, the (G, D) pairs in that order.
        objective (`Pix2PixObjective` or `CartoonGANObjective`): the losses; its ``is_adversarial(step)`` says
            whether D trains at this step (CartoonGAN's initialization phase trains G on content only).
        batch (`dict`): ``input`` and ``target`` crops (B, 3, R, R) in [-1, 1] (and ``target_smoothed`` for CartoonGAN;
            ``style`` (B,) long for multi-target data, passed to the generator).
        step (`int`): the optimizer steps done so far.
        max_grad_norm (`float`, *optional*, defaults to 0.0): clip gradient norms to this (0: no clipping).
        skip_nonfinite (`bool`, *optional*, defaults to False): when a loss is NaN or infinite on any process, drop
            that update (D's, or G's) on every process and go on, instead of raising `NonFiniteLossError`.

    Returns:
        `dict[str, torch.Tensor]`: the logged loss terms, detached (``skipped_d`` / ``skipped_g`` = 1 for an update
        dropped under ``skip_nonfinite``).
    """
    optimizer_g, optimizer_d = optimizers
    scheduler_g, scheduler_d = schedulers
    unwrapped_d = accelerator.unwrap_model(discriminator)
    adversarial = objective.is_adversarial(step)
    logs: dict[str, torch.Tensor] = {}

    def optimizer_step(model: nn.Module, optimizer, scheduler) -> None:
        # Under accumulate(), accelerate skips the optimizer step on all but the last micro-step.
        if accelerator.sync_gradients and max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def finite(name: str, model_logs: dict[str, torch.Tensor], optimizer, scheduler) -> bool:
        # Checked before backward, on every process at once: NaN never reaches the weights, no process skips alone.
        bad = nonfinite_terms(accelerator, model_logs)
        if not bad:
            return True
        values = ", ".join(f"{term} = {model_logs[term].item():.4g}" for term in bad)
        if not skip_nonfinite:
            raise NonFiniteLossError(
                f"Step {step + 1}: the loss is not finite ({values} on some process); stopped before it reaches the "
                "weights or a checkpoint. Lower --learning_rate, clip with --max_grad_norm, check the data and the "
                "weights you start from, or drop such updates with --skip_nonfinite_steps."
            )
        optimizer.zero_grad(set_to_none=True)  # an accumulated update is dropped whole
        scheduler.step()  # the schedule keeps counting optimizer steps
        logs[f"skipped_{name}"] = torch.ones((), device=accelerator.device)
        return False

    with accelerator.accumulate(generator, discriminator):
        # a style-conditioned generator gets each sample's style (multi-target data): (B,) long
        fake = generator(batch["input"], batch["style"]) if "style" in batch else generator(batch["input"])
        if adversarial:  # D step: real → real, G's outputs (and, for CartoonGAN, smoothed-edge cartoons) → fake
            loss_d, logs_d = objective.discriminator_loss(discriminator, batch, fake)
            logs.update(logs_d)
            if finite("d", logs_d, optimizer_d, scheduler_d):
                accelerator.backward(loss_d)
                optimizer_step(discriminator, optimizer_d, scheduler_d)
        # G step with D frozen, used unwrapped so DDP does not wait for D's gradients; the unwrapped D (and VGG)
        # run outside the autocast that prepare() puts around the prepared models' forward.
        unwrapped_d.requires_grad_(False)
        try:
            with accelerator.autocast():
                loss_g, logs_g = objective.generator_loss(unwrapped_d, batch, fake, adversarial=adversarial)
            logs.update(logs_g)
            if finite("g", logs_g, optimizer_g, scheduler_g):
                accelerator.backward(loss_g)
                optimizer_step(generator, optimizer_g, scheduler_g)
        finally:
            unwrapped_d.requires_grad_(True)
    return logs


def tone_head_samples(pairs, streaming: bool, count: int = 256, seed: int = 0) -> list[dict]:
    """``count`` random crops of the training pairs (the first ``count`` readable rows when streaming), unreadable
    rows replaced as in training. Drawn with ``seed`` alone: the same on every process."""
    if streaming:
        return list(itertools.islice(iter(StreamingPairedDataset(pairs)), count))
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(len(pairs), (count,), generator=generator).tolist()
    return [pairs[i] for i in indices]


def fit_tone_head(
    tone_head: torch.nn.Module, samples: list[dict], steps: int, seed: int = 0, learning_rate: float = 1e-2
) -> float:
    """Fit a generator's per-pixel tone head to training pairs pixel by pixel (photo colour → target colour).

    A warm start for ``UNetGenerator(tone_head_channels=N)`` and `GuidedFilterGenerator`'s tone head: the teacher's
    colour mapping (grading, flat levels) is mostly a function of each pixel's own colour, which a small MLP learns in
    seconds, while a U-Net — whose only full-resolution nonlinearity is its final tanh — learns it slowly and
    coarsely. Joint training then refines the head on the network's outputs. A style-conditioned head
    (`StyleColorMap`) is fitted per style at once: each pixel with its sample's ``style`` (0 when samples have none).
    Returns the final L1 loss.
    """
    if not samples:
        raise ValueError("fit_tone_head: no readable training pairs to fit the tone head on.")
    photos = torch.cat([sample["input"].flatten(1).T for sample in samples])  # (pixels, 3) in [-1, 1]
    targets = torch.cat([sample["target"].flatten(1).T for sample in samples])
    styled = isinstance(tone_head, StyleColorMap)
    styles = torch.cat([sample.get("style", torch.tensor(0)).expand(sample["input"][0].numel()) for sample in samples])
    device = next(tone_head.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(tone_head.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=learning_rate / 10)
    loss = torch.zeros(())
    for _ in range(steps):
        batch = torch.randint(len(photos), (16384,), generator=generator)
        if styled:  # one (1, 3, n, 1) image of the drawn pixels of each style, with that style
            parts = [batch[styles[batch] == style] for style in styles[batch].unique()]
            prediction = torch.cat(
                [tone_head(photos[p].T[None, :, :, None].to(device), styles[p[:1]].to(device)) for p in parts], dim=2
            )
            target = torch.cat([targets[p].T[None, :, :, None] for p in parts], dim=2).to(device)
        else:
            photo, target = (t[batch].T[None, :, :, None].to(device) for t in (photos, targets))  # a (1, 3, N, 1) image
            prediction = tone_head(photo)
        loss = torch.nn.functional.l1_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return loss.item()


# concentration (`estimate_levels`) at and above which a style starts fully posterized; none at and below the floor
LEVELS_FULL, LEVELS_FLOOR = 0.6, 0.3


def fit_level_quantizer(quantizer: LevelQuantizer, samples: list[dict]) -> dict[int, tuple[float, float]]:
    """Start each style's `LevelQuantizer` levels where its training targets' luma levels are (`estimate_levels`), at
    a strength that grows with how clearly the targets are posterized: 0 for a concentration at or below
    ``LEVELS_FLOOR`` (continuous tones: the ghibli teacher's targets score 0.1–0.2), 1 at ``LEVELS_FULL`` and above
    (the toon teacher's 0.64–0.71; painterly's soft steps, 0.40–0.59, start in between). Without it the quantizer
    starts with levels that cut the teacher's in half, where no gradient moves them. Styles without samples keep their
    start. Returns ``{style: (levels, concentration)}``."""
    targets = [(int(sample.get("style", torch.tensor(0))), sample["target"]) for sample in samples]
    fitted = {}
    for style in sorted({style for style, _ in targets}):
        rgb = torch.cat([target.flatten(1) for s, target in targets if s == style], dim=1)  # (3, pixels) in [-1, 1]
        step, offset, concentration = estimate_levels(quantizer.signal(rgb))
        strength = (concentration - LEVELS_FLOOR) / (LEVELS_FULL - LEVELS_FLOOR)
        quantizer.set_levels(style, step, offset, strength)
        fitted[style] = (2 / step, concentration)
    return fitted


@torch.no_grad()
def fit_detail_weights(generator: nn.Module, samples: list[dict]) -> dict[int, float]:
    """Start each style's detail weight of a `GuidedFilterGenerator(photo_smoothing=...)` at the least-squares share
    of the smoothed photo's fine structure in its training targets, in [0, 1]: with each image's half-resolution
    version (area-downsampled, upsampled as the model does, which the network can draw) taken out of both,
    ``w = <target detail, smoothed detail> / |smoothed detail|²``. A flat style (the ghibli teacher's: 0.26) starts
    with little of the photo's structure, a textured one (painterly's: 1) with all of it, instead of every style at 1
    and walking down from there (in 1000 steps, ghibli only to 0.46). Styles without samples keep their start.
    Returns ``{style: weight}``."""
    smoother, weights = generator.photo_smoother, generator.style_detail.weight
    upsample = generator.surface_upsampler
    device = weights.device
    sums: dict[int, list[torch.Tensor]] = {}
    for sample in samples:
        photo, target = sample["input"][None].to(device), sample["target"][None].to(device)
        style = sample.get("style", torch.tensor(0)).reshape(1).to(device)
        size = tuple(-(-n // generator.scale_factor) for n in photo.shape[-2:])
        photo_low = torch.nn.functional.interpolate(photo, size=size, mode="area")
        smoothed = smoother(photo_low, photo, style)
        both_low = torch.nn.functional.interpolate(torch.cat([smoothed, target], 1), size=size, mode="area")
        surfaces = upsample(photo_low, both_low, photo)  # (1, 6, H, W): both at half resolution, upsampled
        smoothed, detail = smoothed - surfaces[:, :3], target - surfaces[:, 3:]
        product = sums.setdefault(int(style), [torch.zeros((), device=device), torch.zeros((), device=device)])
        product[0] += (smoothed * detail).sum()
        product[1] += smoothed.square().sum()
    fitted = {}
    for style, (dot, norm) in sorted(sums.items()):
        fitted[style] = float((dot / norm.clamp_min(1e-12)).clamp(0, 1))
        weights[style] = fitted[style]
    return fitted


def lr_lambda(schedule: str, total_steps: int, decay_start: int | None):
    """Multiplier of the base learning rate at each step: constant, or pix2pix's constant-then-linear-to-zero."""
    if schedule == "constant":
        return lambda step: 1.0
    start = total_steps // 2 if decay_start is None else decay_start
    return lambda step: 1.0 - max(0, step - start) / max(1, total_steps - start + 1)


# -- validation ------------------------------------------------------------------------------------------------------


class StyleSelected(nn.Module):
    """A style-conditioned generator drawing one style: ``forward(x)`` is ``generator(x, style)`` for every image,
    so the `Cartoonizer` (which passes images only) can run it. It has no ``styles``, so the pipeline draws every
    photo at its own size (the generator's ``work_sides`` are not passed on; give a `Cartoonizer` the generator and
    ``style=`` for those).

    Args:
        generator (`nn.Module`): a generator with ``styles`` and ``style_indices`` (e.g. `GuidedFilterGenerator`).
        style (`str`): one of ``generator.styles``.
    """

    def __init__(self, generator: nn.Module, style: str):
        super().__init__()
        self.generator = generator
        self.style_index = int(generator.style_indices(style, 1)[0])  # raises for an unknown style, naming them
        self.size_multiple = getattr(generator, "size_multiple", 1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        style = torch.full((sample.shape[0],), self.style_index, dtype=torch.long, device=sample.device)
        return self.generator(sample, style)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB between images in [-1, 1] (peak-to-peak 2)."""
    mse = torch.mean((prediction.float() - target.float()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


@torch.no_grad()
def validate(
    generator: nn.Module,
    pairs: list[tuple[Image.Image, Image.Image]],
    device: str | torch.device = "cpu",
    max_side: int | None = None,
    cell_size: int = 256,
    style: str | None = None,
) -> tuple[Image.Image, dict[str, float]]:
    """Cartoonize whole validation photos as users will (`Cartoonizer` on a copy of ``generator``, in float32).

    Args:
        generator (`nn.Module`): the generator being trained (unwrapped); it is copied, not changed.
        pairs (`list`): whole (photo, target) images, e.g. from `PairedImageDataset.whole_pairs`.
        max_side (`int`, *optional*): downscale photo and target first, so the longer side is at most this.
        cell_size (`int`, *optional*, defaults to 256): side of each image's square cell in the grid.
        style (`str`, *optional*): the style to draw in, for a style-conditioned generator (default: its first).

    Returns:
        `(grid, metrics)`: rows of (photo | output | target), each fitted into a ``cell_size`` square, and the mean
        ``val/l1`` and ``val/psnr`` of the outputs against the targets at full size (``val/psnr_input``: the photos'
        own PSNR, for scale).
    """
    if not pairs:
        raise ValueError("`pairs` is empty: no readable validation images.")
    generator = copy.deepcopy(generator)
    cartoonizer = Cartoonizer(generator if style is None else StyleSelected(generator, style), device, torch.float32)
    cartoonizer.set_progress_bar_config(disable=True)
    photos = [resize_to_max_side(photo, max_side) for photo, _ in pairs]
    targets = [resize_to_max_side(target, max_side) for _, target in pairs]
    outputs = cartoonizer(photos)
    metrics: dict[str, list[float]] = {"val/l1": [], "val/psnr": [], "val/psnr_input": []}
    rows = []
    for photo, output, target in zip(photos, outputs, targets, strict=True):
        photo_t, output_t, target_t = (pil_to_tensor(image) for image in (photo, output, target))  # (3, H, W)
        metrics["val/l1"].append(torch.mean(torch.abs(output_t - target_t)).item())
        metrics["val/psnr"].append(psnr(output_t, target_t))
        metrics["val/psnr_input"].append(psnr(photo_t, target_t))
        cells = [np.asarray(ImageOps.pad(image, (cell_size, cell_size))) for image in (photo, output, target)]
        rows.append(np.concatenate(cells, axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    return grid, {name: float(np.mean(values)) for name, values in metrics.items()}
