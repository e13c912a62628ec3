"""Pix2Pix U-Net generator (Isola et al., 2017, "Image-to-Image Translation with Conditional Adversarial Networks").

An encoder of stride-2 4×4 convs down to a bottleneck, a mirrored decoder of stride-2 transposed convs, and a skip
connection from each encoder level to its decoder twin. The defaults reproduce the reference ``unet_256``
(``num_downs=8``, ``ngf=64``, BatchNorm, dropout 0.5 in the three decoder blocks just above the bottleneck: 54,413,955
parameters), so reference checkpoints map onto it (see `ghibligan.convert`).

Its options come in three groups (named recipes of them are in `ghibligan.models.presets`):

* **pix2pix** — ``num_downs``, ``ngf``, ``norm``, ``dropout``, ``upsample`` (``"resize"`` swaps transposed convs for
  resize + 3×3 conv, which avoids checkerboard artifacts);
* **attention U-Net** — ``innermost_kernel=5`` (the last encoder conv), ``attention_heads=8`` (multi-head
  self-attention on the bottleneck tokens, for any bottleneck size) and ``up_activation="leaky_relu"``: the
  ``attention_unet_512`` preset;
* **output stage** — ``residual`` and ``tone_head_channels`` (see `ghibligan.models.output_stage`), for fast
  photo → stylized-photo models such as the bundled one.

Like the reference, the skip connection of each inner level carries ``LeakyReLU(features)``: pix2pix's encoder
activation is in place, so the tensor it concatenates has already been through it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .hub import GhibliganHubMixin
from .layers import (
    ACTIVATIONS,
    NORMS,
    UPSAMPLE_MODES,
    check_choice,
    check_positive_int,
    conv_uses_bias,
    crop_padding,
    init_gan_weights,
    make_activation,
    make_norm,
    pad_to_multiple,
)
from .output_stage import OutputStageMixin, ToneHead

__all__ = [
    "BottleneckAttention",
    "ToneHead",
    "UNetDownBlock",
    "UNetGenerator",
    "UNetUpBlock",
]  # ToneHead: moved, still importable here


class UNetDownBlock(nn.Module):
    """LeakyReLU(0.2) → stride-2 conv → norm. The activation's output is also the level's skip connection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str, bias: bool):
        super().__init__()
        self.act = nn.LeakyReLU(0.2)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=2, padding=(kernel_size - 1) // 2, bias=bias
        )
        self.norm = make_norm(norm, out_channels)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.act(hidden)
        return self.norm(self.conv(skip)), skip


class UNetUpBlock(nn.Module):
    """Activation → ×2 upsampling conv (transposed 4×4, or nearest resize + 3×3) → norm → dropout."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str,
        bias: bool,
        activation: str,
        upsample: str,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.act = make_activation(activation)
        if upsample == "transpose":
            self.resize = nn.Identity()
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)
        else:
            self.resize = nn.Upsample(scale_factor=2, mode="nearest")
            self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
        self.norm = make_norm(norm, out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.conv(self.resize(self.act(hidden)))))


class BottleneckAttention(nn.Module):
    """Pre-norm multi-head self-attention over the bottleneck's H×W positions, with a residual connection.

    Works for any bottleneck size (1×1 at 256² with 8 downs, 2×2 at 512², larger for larger inputs).
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = hidden.shape
        tokens = self.norm(hidden.flatten(2).transpose(1, 2))  # (B, H*W, C)
        attended, _ = self.attn(tokens, tokens, tokens, need_weights=False)  # (B, H*W, C)
        return hidden + attended.transpose(1, 2).reshape(batch, channels, height, width)


class UNetGenerator(nn.Module, OutputStageMixin, GhibliganHubMixin):
    r"""Pix2Pix U-Net generator: image in [-1, 1] → image in [-1, 1], any size.

    The arguments come in three groups; keyword order is kept for old code and configs.

    Args:
        in_channels (`int`, *optional*, defaults to 3): channels of the input image.
        out_channels (`int`, *optional*, defaults to 3): channels of the output image.

        num_downs (`int`, *optional*, defaults to 8): *pix2pix.* Stride-2 encoder levels; 8 is ``unet_256``, 7
            ``unet_128``. Inputs are padded to a multiple of ``2**num_downs`` and cropped back.
        ngf (`int`, *optional*, defaults to 64): *pix2pix.* Filters of the first level; level ``i`` has
            ``ngf * min(2**i, 8)``.
        norm (`str`, *optional*, defaults to `"batch"`): *pix2pix.* ``"batch"``, ``"instance"`` or ``"none"``.
        dropout (`float`, *optional*, defaults to 0.5): *pix2pix.* Dropout in the ``num_downs - 5`` decoder blocks just
            above the bottleneck (active in ``train()`` only). 0 disables it.
        upsample (`str`, *optional*, defaults to `"transpose"`): *pix2pix.* ``"transpose"`` (transposed conv, as in
            pix2pix) or ``"resize"`` (nearest ×2 then 3×3 conv: no checkerboard artifacts).

        innermost_kernel (`int`, *optional*, defaults to 4): *attention U-Net.* Kernel of the last encoder conv (3, 4
            or 5; the attention U-Net uses 5).
        attention_heads (`int`, *optional*, defaults to 0): *attention U-Net.* Heads of self-attention on the
            bottleneck; 0 disables it.
        up_activation (`str`, *optional*, defaults to `"relu"`): *attention U-Net.* Decoder activation, ``"relu"``
            (pix2pix) or ``"leaky_relu"`` (the attention U-Net).

        residual (`bool`, *optional*, defaults to `False`): *output stage.* Predict the *change* to the input,
            ``clamp(input + tanh(decoder), -1, 1)``, instead of the image; starts as the identity. Needs
            ``in_channels == out_channels``.
        tone_head_channels (`int`, *optional*, defaults to 0): *output stage.* Width of a per-pixel colour MLP
            applied to the output (`ToneHead`); starts as the identity. 0 disables it.

    Example:
        ```py
        >>> import torch
        >>> from ghibligan import UNetGenerator
        >>> model = UNetGenerator(ngf=16).eval()
        >>> model(torch.zeros(1, 3, 300, 457)).shape
        torch.Size([1, 3, 300, 457])
        ```
    """

    # removed options an older config.json may still hold → the value meaning "off", which loads (see `check_config`)
    removed_config_keys: ClassVar[dict[str, Any]] = {"full_res_channels": 0}

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        innermost_kernel: int = 4,
        attention_heads: int = 0,
        up_activation: str = "relu",
        upsample: str = "transpose",
        residual: bool = False,
        tone_head_channels: int = 0,
    ):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("num_downs", num_downs, minimum=2)
        check_positive_int("ngf", ngf)
        check_choice("norm", norm, NORMS)
        check_choice("up_activation", up_activation, ACTIVATIONS)
        check_choice("upsample", upsample, UPSAMPLE_MODES)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
        if innermost_kernel not in (3, 4, 5):
            raise ValueError(
                "`innermost_kernel` must be 3, 4 or 5 (a stride-2 conv that halves the size), "
                f"got {innermost_kernel!r}."
            )
        check_positive_int("attention_heads", attention_heads, minimum=0)
        self.check_output_stage(in_channels, out_channels, residual, tone_head_channels)
        channels = [ngf * min(2**level, 8) for level in range(num_downs)]
        if attention_heads and channels[-1] % attention_heads:
            raise ValueError(
                f"`attention_heads` ({attention_heads}) must divide the bottleneck channels ({channels[-1]} = ngf * 8)."
            )
        self.num_downs = num_downs
        bias = conv_uses_bias(norm)

        # Encoder: level 0 is a bare conv; levels 1..n-1 are LeakyReLU → conv → norm (no norm at the bottleneck).
        self.conv_in = nn.Conv2d(in_channels, channels[0], 4, stride=2, padding=1, bias=bias)
        self.down_blocks = nn.ModuleList(
            UNetDownBlock(
                channels[level - 1],
                channels[level],
                kernel_size=innermost_kernel if level == num_downs - 1 else 4,
                norm="none" if level == num_downs - 1 else norm,
                bias=bias,
            )
            for level in range(1, num_downs)
        )
        self.mid_block = BottleneckAttention(channels[-1], attention_heads) if attention_heads else nn.Identity()

        # Decoder, bottleneck first: block for level i maps to level i-1's channels. All but the innermost take the
        # concatenation [skip, decoded], hence twice the channels.
        self.up_blocks = nn.ModuleList()
        for level in range(num_downs - 1, 0, -1):
            innermost = level == num_downs - 1
            self.up_blocks.append(
                UNetUpBlock(
                    channels[level] if innermost else 2 * channels[level],
                    channels[level - 1],
                    norm=norm,
                    bias=bias,
                    activation=up_activation,
                    upsample=upsample,
                    dropout=dropout if 4 <= level <= num_downs - 2 else 0.0,
                )
            )
        self.conv_out = UNetUpBlock(2 * channels[0], out_channels, "none", True, up_activation, upsample)
        init_gan_weights(self)
        self.init_output_stage(self.conv_out.conv, residual, tone_head_channels)

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this (``2**num_downs``)."""
        return 2**self.num_downs

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        # 1. pad to a multiple of 2**num_downs
        original = sample
        sample, pads = pad_to_multiple(sample, self.size_multiple)  # (B, C, H, W)

        # 2. encode, keeping each level's skip
        hidden = self.conv_in(sample)  # (B, ngf, H/2, W/2)
        skips = []
        for block in self.down_blocks:
            hidden, skip = block(hidden)
            skips.append(skip)

        # 3. bottleneck
        hidden = self.mid_block(hidden)  # (B, 8*ngf, H/2**n, W/2**n)

        # 4. decode: each level sees [skip, decoded] concatenated
        hidden = self.up_blocks[0](hidden)
        for block, skip in zip(self.up_blocks[1:], reversed(skips[1:]), strict=True):
            hidden = block(torch.cat([skip, hidden], dim=1))
        hidden = self.conv_out(torch.cat([skips[0], hidden], dim=1))  # (B, out_channels, H, W)

        # 5. tanh, crop back, output stage (residual: add the input; tone head: recolour each pixel)
        return self.output_stage(crop_padding(torch.tanh(hidden), pads), original)
