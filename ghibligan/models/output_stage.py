"""The output stage shared by the generators: an optional residual connection and an optional per-pixel tone head.

Both serve fast photo → stylized-photo models (the bundled one):

* ``residual=True`` predicts the *change* to the photo, ``clamp(input + image, -1, 1)``, so full-resolution detail the
  network never sees at full resolution (the pix2pix U-Net's finest skip is at half resolution) is kept for free.
  The generator's last conv starts at zero, so the model starts as the identity.
* ``tone_head_channels=N`` adds `ToneHead`, a per-pixel colour MLP after the output. A generator ending in a linear
  conv and tanh can only approximate sharp tone curves (the flat luminance levels of cel shading) smoothly; the tone
  head draws them at full resolution. It also starts as the identity. `ghibligan.training.fit_tone_head` gives it a
  pixel-by-pixel warm start.

`OutputStageMixin` adds them to a generator; the tone head's weights live under ``tone_head.*`` in its state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import check_positive_int, map_row_slices


class ToneHead(nn.Module):
    """Per-pixel colour mapping ``clamp(x + MLP(x), -1, 1)`` with a 1×1-conv MLP; the identity at initialisation.

    Default (Kaiming-uniform) init for the hidden layers rather than pix2pix's N(0, 0.02), which would make a
    3-input MLP's activations vanishingly small; the last layer starts at zero.

    Args:
        channels (`int`): channels of the image it maps (3 for RGB).
        hidden (`int`): width of its two hidden layers.
    """

    inference_pixels: int | None = 32768  # whole rows per slice at inference (64 at 512 wide); None: one pass

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, channels, 1),
        )  # fmt: skip
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # inference: a slice of rows at a time, so the wide hidden activations stay in cache (2.2× faster end to end at
        # 512² with 64 rows)
        return map_row_slices(self, image, lambda part: (part + self.mlp(part)).clamp(-1, 1))


class OutputStageMixin:
    """Residual connection and tone head for an `nn.Module` generator.

    A generator calls `check_output_stage` with its other argument checks, `init_output_stage` at the end of
    ``__init__`` (after its own weight init, which must not touch the tone head), and returns
    ``self.output_stage(image, sample)`` from ``forward``, where ``image`` is its tanh output in [-1, 1].
    """

    residual: bool
    tone_head: ToneHead | None

    @staticmethod
    def check_output_stage(in_channels: int, out_channels: int, residual: bool, tone_head_channels: int) -> None:
        """Raise a `ValueError` naming the argument if ``residual`` / ``tone_head_channels`` cannot be built."""
        check_positive_int("tone_head_channels", tone_head_channels, minimum=0)
        if residual and in_channels != out_channels:
            raise ValueError(
                f"`residual=True` needs in_channels == out_channels, got {in_channels} and {out_channels}."
            )

    def init_output_stage(self, last_conv: nn.Conv2d | nn.ConvTranspose2d, residual: bool, tone_head_channels: int):
        """Build the stage; a residual generator's ``last_conv`` is zeroed so that the generator starts as the identity
        (pix2pix's init would give it a random full-strength change to undo first)."""
        self.residual = residual
        if residual:
            nn.init.zeros_(last_conv.weight)
            if last_conv.bias is not None:
                nn.init.zeros_(last_conv.bias)
        out_channels = last_conv.out_channels
        self.tone_head = ToneHead(out_channels, tone_head_channels) if tone_head_channels else None

    def output_stage(self, image: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """``image`` (B, C, H, W) in [-1, 1], plus the input ``sample`` if residual, through the tone head if any."""
        if self.residual:
            image = (sample + image).clamp(-1, 1)
        if self.tone_head is not None:
            image = self.tone_head(image)
        return image
