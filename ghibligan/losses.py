"""The objectives: adversarial (vanilla / lsgan / hinge), pix2pix's cGAN + λ·L1, CartoonGAN's content loss.

pix2pix (Isola et al., 2017): D judges (input, target) as real and (input, G(input)) as fake; G minimises
adversarial + λ·L1(G(input), target) with λ = 100.

CartoonGAN (Chen et al., 2018): D judges cartoons as real and both G(photo) and edge-smoothed cartoons as fake
(edge-promoting adversarial loss); G minimises adversarial + ω·L1(VGG(G(photo)), VGG(photo)) at conv4_4, ω = 10.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_MODES = ("vanilla", "lsgan", "hinge")


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: list[torch.Tensor] | torch.Tensor, mode: str
) -> torch.Tensor:
    """D's loss: ``real_logits`` should score real, each of ``fake_logits`` fake. Fakes are averaged (pix2pix
    halves D's loss for the same reason: D should not learn faster than G)."""
    fakes = fake_logits if isinstance(fake_logits, list) else [fake_logits]
    if mode == "hinge":
        real = F.relu(1.0 - real_logits).mean()
        fake = sum(F.relu(1.0 + logits).mean() for logits in fakes) / len(fakes)
    elif mode == "lsgan":
        real = F.mse_loss(real_logits, torch.ones_like(real_logits))
        fake = sum(F.mse_loss(logits, torch.zeros_like(logits)) for logits in fakes) / len(fakes)
    else:
        real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        fake = sum(F.binary_cross_entropy_with_logits(x, torch.zeros_like(x)) for x in fakes) / len(fakes)
    return 0.5 * (real + fake)


def generator_adversarial_loss(fake_logits: torch.Tensor, mode: str) -> torch.Tensor:
    """G's adversarial loss: make D score its output as real."""
    if mode == "hinge":
        return -fake_logits.mean()
    if mode == "lsgan":
        return F.mse_loss(fake_logits, torch.ones_like(fake_logits))
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def content_loss(vgg: torch.nn.Module, generated: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """CartoonGAN's content loss: L1 between VGG19 conv4_4 features of G(photo) and of the photo (no grad)."""
    with torch.no_grad():
        target = vgg(photo)
    return F.l1_loss(vgg(generated), target)
