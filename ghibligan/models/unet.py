"""Pix2Pix U-Net generator (Isola et al., 2017, "Image-to-Image Translation with Conditional Adversarial Networks").

An encoder of stride-2 4×4 convs down to a bottleneck, a mirrored decoder of stride-2 transposed convs, and a skip
connection from each encoder level to its decoder twin. The defaults reproduce the reference ``unet_256``
(``num_downs=8``, ``ngf=64``, BatchNorm, dropout 0.5 in the three decoder blocks just above the bottleneck: 54,413,955
parameters), so reference checkpoints map onto it (see `ghibligan.convert`).

The seed project's variant is a set of plain options: ``innermost_kernel=5`` (the last encoder conv),
``attention_heads=8`` (multi-head self-attention on the bottleneck tokens, for any bottleneck size) and
``up_activation="leaky_relu"``; ``upsample="resize"`` swaps transposed convs for resize + 3×3 conv, which avoids
checkerboard artifacts.

Two options serve fast photo → stylized-photo models (the bundled one): ``residual=True`` predicts the change to the
photo, and ``tone_head_channels`` adds a per-pixel colour MLP after the output. The pix2pix U-Net has no nonlinearity
at full resolution except its final tanh, so it can only blur sharp tone curves such as a cartoon's flat colour levels;
the tone head draws them at full resolution. `ghibligan.training.fit_tone_head` gives it a pixel-by-pixel warm start.

Like the reference, the skip connection of each inner level carries ``LeakyReLU(features)``: pix2pix's encoder
activation is in place, so the tensor it concatenates has already been through it.
"""

from __future__ import annotations

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


class ToneHead(nn.Module):
    """Per-pixel colour mapping ``clamp(x + MLP(x), -1, 1)`` with a 1×1-conv MLP; the identity at initialisation.

    Default (Kaiming-uniform) init for the hidden layers rather than pix2pix's N(0, 0.02), which would make a
    3-input MLP's activations vanishingly small; the last layer starts at zero.
    """

    inference_rows = 64

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
        if self.training or image.shape[-2] <= self.inference_rows:
            return (image + self.mlp(image)).clamp(-1, 1)
        # inference: 64 rows at a time, so the wide hidden activations stay in cache (2.2× faster end to end at 512²)
        rows = image.split(self.inference_rows, dim=-2)
        return torch.cat([(part + self.mlp(part)).clamp(-1, 1) for part in rows], dim=-2)


class UNetGenerator(nn.Module, GhibliganHubMixin):
    r"""Pix2Pix U-Net generator: image in [-1, 1] → image in [-1, 1], any size.

    Args:
        in_channels (`int`, *optional*, defaults to 3): channels of the input image.
        out_channels (`int`, *optional*, defaults to 3): channels of the output image.
        num_downs (`int`, *optional*, defaults to 8): stride-2 encoder levels; 8 is ``unet_256``, 7 ``unet_128``.
            Inputs are padded to a multiple of ``2**num_downs`` and cropped back.
        ngf (`int`, *optional*, defaults to 64): filters of the first level; level ``i`` has ``ngf * min(2**i, 8)``.
        norm (`str`, *optional*, defaults to `"batch"`): ``"batch"``, ``"instance"`` or ``"none"``.
        dropout (`float`, *optional*, defaults to 0.5): dropout in the ``num_downs - 5`` decoder blocks just above
            the bottleneck, as in pix2pix (active in ``train()`` only). 0 disables it.
        innermost_kernel (`int`, *optional*, defaults to 4): kernel of the last encoder conv (the seed used 5).
        attention_heads (`int`, *optional*, defaults to 0): heads of self-attention on the bottleneck; 0 disables it.
        up_activation (`str`, *optional*, defaults to `"relu"`): decoder activation, ``"relu"`` or ``"leaky_relu"``.
        upsample (`str`, *optional*, defaults to `"transpose"`): ``"transpose"`` (transposed conv, as in pix2pix) or
            ``"resize"`` (nearest ×2 then 3×3 conv: no checkerboard artifacts).
        residual (`bool`, *optional*, defaults to `False`): predict the *change* to the input,
            ``clamp(input + tanh(decoder), -1, 1)``, instead of the image. The pix2pix U-Net's finest skip is at half
            resolution, so a plain U-Net must rebuild full-resolution detail; a residual one keeps it for free, which
            suits photo → stylized-photo teachers. The last conv starts at zero, so the model starts as the identity.
            Needs ``in_channels == out_channels``.
        full_res_channels (`int`, *optional*, defaults to 0): add a full-resolution path of this many channels: a
            3×3 conv on the input, concatenated with the decoder's last features and mixed by a final 3×3 conv. The
            pix2pix U-Net otherwise never convolves at full resolution (its first conv has stride 2), so it can only
            reach full-resolution texture through that conv; 0 keeps the pix2pix layout.
        tone_head_channels (`int`, *optional*, defaults to 0): add a per-pixel colour mapping after the output, a small
            MLP (1×1 convs, two hidden layers of this width, LeakyReLU) whose output is added to the image. It can
            learn sharp tone curves such as the flat luminance levels of cel shading at full resolution, which the
            U-Net's last layer (linear, then tanh) only approximates smoothly. Starts as the identity. 0 disables it.

    Example:
        ```py
        >>> import torch
        >>> from ghibligan import UNetGenerator
        >>> model = UNetGenerator(ngf=16).eval()
        >>> model(torch.zeros(1, 3, 300, 457)).shape
        torch.Size([1, 3, 300, 457])
        ```
    """

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
        full_res_channels: int = 0,
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
        check_positive_int("full_res_channels", full_res_channels, minimum=0)
        check_positive_int("tone_head_channels", tone_head_channels, minimum=0)
        channels = [ngf * min(2**level, 8) for level in range(num_downs)]
        if attention_heads and channels[-1] % attention_heads:
            raise ValueError(
                f"`attention_heads` ({attention_heads}) must divide the bottleneck channels ({channels[-1]} = ngf * 8)."
            )
        if residual and in_channels != out_channels:
            raise ValueError(
                f"`residual=True` needs in_channels == out_channels, got {in_channels} and {out_channels}."
            )
        self.num_downs = num_downs
        self.residual = residual
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
        self.full_res_channels = full_res_channels
        last_channels = full_res_channels or out_channels
        self.conv_out = UNetUpBlock(2 * channels[0], last_channels, "none", True, up_activation, upsample)
        if full_res_channels:
            self.full_res_in = nn.Sequential(nn.Conv2d(in_channels, full_res_channels, 3, padding=1), nn.LeakyReLU(0.2))
            self.full_res_out = nn.Sequential(
                make_activation(up_activation), nn.Conv2d(2 * full_res_channels, out_channels, 3, padding=1)
            )
        init_gan_weights(self)
        if residual:  # start as the identity: pix2pix's init gives a random full-strength change to undo first
            last = self.full_res_out[-1] if full_res_channels else self.conv_out.conv
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.tone_head = ToneHead(out_channels, tone_head_channels) if tone_head_channels else None

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
        hidden = self.conv_out(torch.cat([skips[0], hidden], dim=1))  # (B, out_channels or full_res_channels, H, W)
        if self.full_res_channels:
            hidden = self.full_res_out(torch.cat([self.full_res_in(sample), hidden], dim=1))  # (B, out_channels, H, W)

        # 5. tanh, crop back (a residual model adds its output to the input)
        output = crop_padding(torch.tanh(hidden), pads)
        if self.residual:
            output = (original + output).clamp(-1, 1)
        if self.tone_head is not None:
            output = self.tone_head(output)
        return output
