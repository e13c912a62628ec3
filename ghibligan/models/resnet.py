"""CartoonGAN generator (Chen, Lai & Liu, CVPR 2018, "CartoonGAN: Generative Adversarial Networks for Photo
Cartoonization"), figure 2.

k7n64s1 → down blocks [k3n128s2, k3n128s1], [k3n256s2, k3n256s1] → ``n_blocks`` residual blocks of two k3n256s1 convs
(8 in the paper) → up blocks [k3n128 ×2 up, k3n128s1], [k3n64 ×2 up, k3n64s1] → k7n3s1 → tanh. Every conv but the
last is followed by the norm and ReLU. Inputs are padded to a multiple of 4 and cropped back, so any size works.

The output stage shared with the U-Net (``residual``, ``tone_head_channels``; see `ghibligan.models.output_stage`) is
off by default, which is the paper's generator.
"""

from __future__ import annotations

import torch
from torch import nn

from .hub import GhibliganHubMixin
from .layers import (
    NORMS,
    UPSAMPLE_MODES,
    check_choice,
    check_positive_int,
    conv_uses_bias,
    crop_padding,
    init_gan_weights,
    make_norm,
    pad_to_multiple,
)
from .output_stage import OutputStageMixin

PADDING_MODES = ("zeros", "reflect", "replicate")


def conv_norm_relu(
    in_channels: int, out_channels: int, kernel_size: int, norm: str, padding_mode: str, stride: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            padding_mode=padding_mode,
            bias=conv_uses_bias(norm),
        ),
        make_norm(norm, out_channels),
        nn.ReLU(),
    )


class ResidualBlock(nn.Module):
    """conv → norm → ReLU → conv → norm, plus the input (no activation after the sum, as in the paper)."""

    def __init__(self, channels: int, norm: str, padding_mode: str):
        super().__init__()
        bias = conv_uses_bias(norm)
        self.block = nn.Sequential(
            conv_norm_relu(channels, channels, 3, norm, padding_mode),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode=padding_mode, bias=bias),
            make_norm(norm, channels),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.block(hidden)


class ResNetGenerator(nn.Module, OutputStageMixin, GhibliganHubMixin, tags=["cartoongan"]):
    r"""CartoonGAN ResNet generator: image in [-1, 1] → image in [-1, 1], any size.

    Args:
        in_channels (`int`, *optional*, defaults to 3): channels of the input image.
        out_channels (`int`, *optional*, defaults to 3): channels of the output image.
        ngf (`int`, *optional*, defaults to 64): filters of the first conv; the down blocks use 2× and 4× that.
        n_blocks (`int`, *optional*, defaults to 8): residual blocks at 1/4 resolution.
        norm (`str`, *optional*, defaults to `"batch"`): ``"batch"`` (the paper), ``"instance"`` or ``"none"``.
        upsample (`str`, *optional*, defaults to `"transpose"`): ``"transpose"`` (the paper's stride-1/2 convs) or
            ``"resize"`` (nearest ×2 then 3×3 conv: no checkerboard artifacts).
        padding_mode (`str`, *optional*, defaults to `"reflect"`): padding of the convs, ``"zeros"``, ``"reflect"``
            or ``"replicate"``. Reflection avoids dark frames at the image borders.
        residual (`bool`, *optional*, defaults to `False`): *output stage.* Predict the *change* to the input,
            ``clamp(input + tanh(conv_out), -1, 1)``; starts as the identity. Needs ``in_channels == out_channels``.
        tone_head_channels (`int`, *optional*, defaults to 0): *output stage.* Width of a per-pixel colour MLP
            applied to the output (`ToneHead`); starts as the identity. 0 disables it.

    Example:
        ```py
        >>> import torch
        >>> from ghibligan import ResNetGenerator
        >>> model = ResNetGenerator(ngf=16, n_blocks=2).eval()
        >>> model(torch.zeros(1, 3, 97, 130)).shape
        torch.Size([1, 3, 97, 130])
        ```
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 8,
        norm: str = "batch",
        upsample: str = "transpose",
        padding_mode: str = "reflect",
        residual: bool = False,
        tone_head_channels: int = 0,
    ):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("ngf", ngf)
        check_positive_int("n_blocks", n_blocks, minimum=0)
        check_choice("norm", norm, NORMS)
        check_choice("upsample", upsample, UPSAMPLE_MODES)
        check_choice("padding_mode", padding_mode, PADDING_MODES)
        self.check_output_stage(in_channels, out_channels, residual, tone_head_channels)
        bias = conv_uses_bias(norm)

        self.conv_in = conv_norm_relu(in_channels, ngf, 7, norm, padding_mode)
        self.down_blocks = nn.ModuleList(
            nn.Sequential(
                conv_norm_relu(ngf * mult, ngf * mult * 2, 3, norm, padding_mode, stride=2),
                conv_norm_relu(ngf * mult * 2, ngf * mult * 2, 3, norm, padding_mode),
            )
            for mult in (1, 2)
        )
        self.mid_block = nn.Sequential(*(ResidualBlock(ngf * 4, norm, padding_mode) for _ in range(n_blocks)))
        self.up_blocks = nn.ModuleList()
        for mult in (4, 2):
            if upsample == "transpose":
                up = nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=bias
                )
                layers = [up]
            else:
                layers = [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(ngf * mult, ngf * mult // 2, 3, padding=1, padding_mode=padding_mode, bias=bias),
                ]
            self.up_blocks.append(
                nn.Sequential(
                    *layers,
                    make_norm(norm, ngf * mult // 2),
                    nn.ReLU(),
                    conv_norm_relu(ngf * mult // 2, ngf * mult // 2, 3, norm, padding_mode),
                )
            )
        self.conv_out = nn.Conv2d(ngf, out_channels, 7, padding=3, padding_mode=padding_mode)
        init_gan_weights(self)
        self.init_output_stage(self.conv_out, residual, tone_head_channels)

    size_multiple = 4

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        # 1. pad to a multiple of 4 (two stride-2 convs)
        original = sample
        sample, pads = pad_to_multiple(sample, self.size_multiple)  # (B, C, H, W)
        # 2. encode
        hidden = self.conv_in(sample)  # (B, ngf, H, W)
        for block in self.down_blocks:
            hidden = block(hidden)  # (B, 4*ngf, H/4, W/4) after both
        # 3. residual blocks
        hidden = self.mid_block(hidden)
        # 4. decode
        for block in self.up_blocks:
            hidden = block(hidden)  # (B, ngf, H, W) after both
        # 5. project to RGB, tanh, crop back, output stage (residual: add the input; tone head: recolour each pixel)
        return self.output_stage(crop_padding(torch.tanh(self.conv_out(hidden)), pads), original)
