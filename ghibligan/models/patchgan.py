"""Patch discriminators: a map of real/fake logits, one per overlapping image patch.

* ``layout="pix2pix"`` — the 70×70 PatchGAN of pix2pix (Isola et al., 2017): C64 (no norm) → C128 → C256 → C512
  (stride 1) → 1-channel conv, 4×4 kernels, LeakyReLU(0.2). With ``n_layers=3`` each logit sees a 70×70 patch.
  Conditional by default: it judges ``cat([input, output])``.
* ``layout="cartoongan"`` — the CartoonGAN discriminator (Chen et al., 2018, fig. 2): k3n32s1 → [k3n64s2, k3n128s1]
  → [k3n128s2, k3n256s1] → k3n256s1 → k3n1s1, LeakyReLU(0.2), unconditional in the paper (``condition_channels=0``).
"""

from __future__ import annotations

import torch
from torch import nn

from .hub import GhibliganHubMixin
from .layers import NORMS, check_choice, check_positive_int, conv_uses_bias, init_gan_weights, make_norm

LAYOUTS = ("pix2pix", "cartoongan")


def conv_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, norm: str) -> list[nn.Module]:
    """conv (3×3 or 4×4, padding 1) → norm → LeakyReLU(0.2)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=1, bias=conv_uses_bias(norm))
    return [conv, make_norm(norm, out_channels), nn.LeakyReLU(0.2)]


class PatchDiscriminator(nn.Module, GhibliganHubMixin, tags=["discriminator"]):
    r"""PatchGAN discriminator returning a logit map of shape (B, 1, h, w).

    Args:
        in_channels (`int`, *optional*, defaults to 3): channels of the image being judged.
        condition_channels (`int`, *optional*, defaults to 3): channels of the conditioning input concatenated in front
            of the image (pix2pix's conditional D); 0 makes the discriminator unconditional.
        ndf (`int`, *optional*, defaults to 64): filters of the first conv.
        n_layers (`int`, *optional*, defaults to 3): stride-2 convs of the pix2pix layout; 3 gives 70×70 patches.
            Ignored by the CartoonGAN layout.
        norm (`str`, *optional*, defaults to `"batch"`): ``"batch"``, ``"instance"`` or ``"none"``.
        layout (`str`, *optional*, defaults to `"pix2pix"`): ``"pix2pix"`` or ``"cartoongan"``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        condition_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        layout: str = "pix2pix",
    ):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("condition_channels", condition_channels, minimum=0)
        check_positive_int("ndf", ndf)
        check_positive_int("n_layers", n_layers)
        check_choice("norm", norm, NORMS)
        check_choice("layout", layout, LAYOUTS)
        self.condition_channels = condition_channels
        channels = in_channels + condition_channels

        if layout == "pix2pix":
            layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            mult = 1
            for n in range(1, n_layers + 1):
                prev, mult = mult, min(2**n, 8)
                layers += conv_block(ndf * prev, ndf * mult, 4, stride=2 if n < n_layers else 1, norm=norm)
            layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        else:
            layers = [nn.Conv2d(channels, ndf // 2, 3, stride=1, padding=1), nn.LeakyReLU(0.2)]
            layers += [nn.Conv2d(ndf // 2, ndf, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            layers += conv_block(ndf, ndf * 2, 3, stride=1, norm=norm)
            layers += [nn.Conv2d(ndf * 2, ndf * 2, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            layers += conv_block(ndf * 2, ndf * 4, 3, stride=1, norm=norm)
            layers += conv_block(ndf * 4, ndf * 4, 3, stride=1, norm=norm)
            layers.append(nn.Conv2d(ndf * 4, 1, 3, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
        init_gan_weights(self)

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Judge ``sample`` (B, in_channels, H, W), given ``condition`` (B, condition_channels, H, W) if conditional."""
        if self.condition_channels:
            if condition is None:
                raise ValueError(
                    f"This discriminator is conditional (condition_channels={self.condition_channels}): "
                    "pass `condition`, the input image it judges the output against."
                )
            sample = torch.cat([condition, sample], dim=1)  # (B, cond + in, H, W), pix2pix's order
        elif condition is not None:
            raise ValueError("This discriminator is unconditional (condition_channels=0): do not pass `condition`.")
        return self.layers(sample)  # (B, 1, h, w)
