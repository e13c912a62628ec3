"""How good can `GuidedFilterGenerator` get? Its output stage fed the best possible low-resolution surface.

The guided-filter generator draws a surface at ``1/scale_factor`` resolution, brings it to full resolution with a
guided filter guided by the photo, and maps colours pixel by pixel (the tone head). This script replaces the learned
low-resolution network by a fixed *surface* and fits only the per-pixel colour map (the model's own `StyleColorMap`,
32 wide, Adam on random pixels of the training split), then scores the validation split against the teacher:

- ``photo``: the downsampled photo itself (what the model does at initialisation: the output stage alone);
- ``teacher``: the teacher's own output, downsampled: a perfect low-resolution network. Its scores are the
  ceiling of the architecture at that scale, whatever the network and the loss.

    python scripts/output_stage_ceiling.py --pairs runs/bundled-styles/pairs --columns ghibli toon painterly

Scores as in `scripts/evaluate_fidelity.py`: error removed (1 - MSE(out, teacher) / MSE(photo, teacher), pooled),
flat share and gradient energy of the output relative to the teacher's (means over the images).
"""

from __future__ import annotations

import argparse
import itertools

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ghibligan.image_io import pil_to_tensor, tensor_to_uint8
from ghibligan.metrics import flat_share, gradient_energy
from ghibligan.models.guided import GuidedFilter, JointBilateralUpsampler, StyleColorMap


@torch.no_grad()
def output_stage(
    photo: torch.Tensor, teacher: torch.Tensor, surface: str, scale_factor: int, upsampler: str = "guided"
) -> torch.Tensor:
    """The guided filter (radius 1, eps 1e-3) from a fixed low-resolution surface; with ``upsampler="bilinear"``, the
    surface upsampled bilinearly (no photo guidance: no texture, soft boundaries); with ``"joint_bilateral"``, the
    bundled model's `JointBilateralUpsampler` (σ 0.1, its initial value)."""
    size = [-(-side // scale_factor) for side in photo.shape[-2:]]
    low = F.interpolate(photo, size=size, mode="area")
    source = low if surface == "photo" else F.interpolate(teacher, size=size, mode="area")
    if upsampler == "bilinear":
        return F.interpolate(source, size=photo.shape[-2:], mode="bilinear", align_corners=False)
    if upsampler == "joint_bilateral":
        return JointBilateralUpsampler(scale_factor, sigma=0.1)(low, source, photo)
    return GuidedFilter(3, radius=1, eps=1e-3)(low, source, photo)


def fit_color_map(pairs: list[tuple[torch.Tensor, torch.Tensor]], steps: int, seed: int) -> StyleColorMap:
    torch.manual_seed(seed)
    inputs = torch.cat([x.flatten(2) for x, _ in pairs], dim=2)[..., None]  # (1, 3, pixels, 1)
    targets = torch.cat([y.flatten(2) for _, y in pairs], dim=2)[..., None]
    color_map = StyleColorMap(3, 32, num_styles=1)
    optimizer = torch.optim.Adam(color_map.parameters(), lr=3e-3)
    style = torch.zeros(1, dtype=torch.long)
    for _ in range(steps):
        pick = torch.randint(0, inputs.shape[2], (65536,))
        loss = (color_map(inputs[:, :, pick], style) - targets[:, :, pick]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return color_map.eval()


def pair_tensors(rows, column: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(photo, teacher) (1, 3, H, W) tensors in [-1, 1] of every row."""
    return [
        (pil_to_tensor(r["input_image"].convert("RGB"))[None], pil_to_tensor(r[column].convert("RGB"))[None])
        for r in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True, help="A make-pairs output folder (train and validation splits).")
    parser.add_argument("--columns", nargs="+", default=["target_image"], help="Teacher columns to score.")
    parser.add_argument("--surfaces", nargs="+", default=["photo", "teacher"], choices=["photo", "teacher"])
    parser.add_argument("--scale_factors", nargs="+", type=int, default=[2], help="Low-resolution scales (2).")
    parser.add_argument(
        "--upsamplers", nargs="+", default=["guided"], choices=["guided", "bilinear", "joint_bilateral"]
    )
    parser.add_argument("--steps", type=int, default=600, help="Adam steps fitting the colour map (600).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    splits = datasets.load_dataset(args.pairs)
    for column in args.columns:
        train, held_out = (pair_tensors(splits[split], column) for split in ("train", "validation"))
        for scale_factor in args.scale_factors:
            for surface, upsampler in itertools.product(args.surfaces, args.upsamplers):
                fit = [(output_stage(p, t, surface, scale_factor, upsampler), t) for p, t in tqdm(train, desc="fit")]
                color_map = fit_color_map(fit, args.steps, args.seed)
                mse_out = mse_photo = 0.0
                flat, energy = [], []
                with torch.no_grad():
                    for photo, teacher in held_out:
                        stage = output_stage(photo, teacher, surface, scale_factor, upsampler)
                        out = color_map(stage, torch.zeros(1, dtype=torch.long))
                        out, teacher_u8, photo_u8 = (tensor_to_uint8(x[0]) for x in (out, teacher, photo))
                        mse_out += float(np.mean((out.astype(np.float64) - teacher_u8) ** 2))
                        mse_photo += float(np.mean((photo_u8.astype(np.float64) - teacher_u8) ** 2))
                        flat.append(flat_share(out) / flat_share(teacher_u8))
                        energy.append(gradient_energy(out) / gradient_energy(teacher_u8))
                print(
                    f"{column:>12} scale {scale_factor} surface {surface:>7} {upsampler:>8}: error removed "
                    f"{100 * (1 - mse_out / mse_photo):5.1f} % | flat share {np.mean(flat):.2f}x the teacher's | "
                    f"gradient energy {np.mean(energy):.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
