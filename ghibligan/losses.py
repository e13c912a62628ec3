"""The objectives: adversarial losses (vanilla / lsgan / hinge), and the two training objectives as objects.

`Pix2PixObjective` (Isola et al., 2017): D judges (input, target) as real and (input, G(input)) as fake; G minimises
λ_adv·adversarial + λ·L1(G(input), target) with λ = 100, plus λ_grad·L1 between the images' gradients (finite
differences), which penalizes texture the teacher removed and edges it drew more than plain L1 does, and
λ_dist·`gradient_distribution_loss`, which asks for the target's edge strengths wherever the edges are. λ_adv = 0 leaves
out D altogether: a regression to the teacher (distillation). For a multi-style generator (``num_styles`` > 0) D is
style-aware, the cGAN one-hot of the original design: it sees the sample's style as constant one-hot planes beside the
photo, so a ``ghibli`` image passed off as ``toon`` is fake.

`CartoonGANObjective` (Chen et al., 2018): D judges cartoons as real and both G(photo) and edge-smoothed cartoons as
fake (edge-promoting adversarial loss); G minimises adversarial + ω·L1(VGG(G(photo)), VGG(photo)) at conv4_4, ω = 10,
after ``init_steps`` of the content loss alone (the paper's initialization phase).

Both are stateless: the training loop hands them the models and the batch, gets back a loss to backpropagate and a
dict of the terms to log, and never needs to know which objective it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models.guided import luma

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


def content_loss(vgg: nn.Module, generated: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """CartoonGAN's content loss: L1 between VGG19 conv4_4 features of G(photo) and of the photo (no grad)."""
    with torch.no_grad():
        target = vgg(photo)
    return F.l1_loss(vgg(generated), target)


def gradient_loss(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical finite differences of two (B, C, H, W) images (sum of the two means)."""
    generated, target = generated.float(), target.float()
    dx = F.l1_loss(generated.diff(dim=-1), target.diff(dim=-1))  # (B, C, H, W-1)
    dy = F.l1_loss(generated.diff(dim=-2), target.diff(dim=-2))  # (B, C, H-1, W)
    return dx + dy


def luma_sobel_magnitude(image: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Gradient magnitude of the BT.601 luma of (B, 3, H, W) images: ``sqrt(Sx² + Sy² + eps²)`` with the unnormalized
    3×3 Sobel kernels, over the valid pixels, (B, 1, H - 2, W - 2); `ghibligan.metrics.sobel_magnitude` in [-1, 1]
    units (÷ 127.5). ``eps`` keeps the square root's gradient finite on flat pixels."""
    image = image.float()
    kernel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=image.device)
    kernels = torch.stack([kernel_x, kernel_x.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    gradients = F.conv2d(luma(image), kernels)  # (B, 2, H - 2, W - 2)
    return (gradients.square().sum(1, keepdim=True) + eps**2).sqrt()


def gradient_distribution_loss(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How differently two images' edges are distributed, wherever they are: per image, the 1-D Wasserstein distance
    (mean L1 between sorted values) between the luma gradient magnitudes (`luma_sobel_magnitude`) of ``generated``
    and ``target``, averaged over the batch.

    L1 to a target whose region borders the model cannot place (a graph segmentation's) is lowest for a blurred
    average: many pixels on soft ramps, few flat ones, no sharp edge. This term is blind to position; it compares how
    many pixels are flat, how many on gentle slopes and how many on sharp edges, so it asks for the target's flat
    regions and crisp borders, and leaves *where* they go to the L1 terms. On the bundled model (λ 0.3 beside L1 and
    the gradient L1) it brought the gradient energy to the teachers' and `toon`'s contour lines back, but no
    flatter regions (BENCHMARKS.md)."""
    generated_magnitude = luma_sobel_magnitude(generated).flatten(1).sort(dim=1).values  # (B, N), ascending
    with torch.no_grad():  # the target is data
        target_magnitude = luma_sobel_magnitude(target).flatten(1).sort(dim=1).values
    return F.l1_loss(generated_magnitude, target_magnitude)


def _check_gan_mode(gan_mode: str) -> None:
    if gan_mode not in GAN_MODES:
        raise ValueError(f"`gan_mode` must be one of {list(GAN_MODES)}, got {gan_mode!r}.")


@dataclass(frozen=True)
class Pix2PixObjective:
    r"""pix2pix's conditional GAN + λ·L1 objective, with an optional L1 on image gradients.

    Args:
        gan_mode (`str`, *optional*, defaults to `"vanilla"`): ``"vanilla"``, ``"lsgan"`` or ``"hinge"``.
        lambda_l1 (`float`, *optional*, defaults to 100.0): weight λ of the L1 distance to the target.
        lambda_gradient (`float`, *optional*, defaults to 0.0): weight of `gradient_loss` (L1 on image gradients).
        lambda_gradient_distribution (`float`, *optional*, defaults to 0.0): weight of `gradient_distribution_loss`
            (the target's distribution of edge strengths, wherever the edges are).
        lambda_mse (`float`, *optional*, defaults to 0.0): weight of the squared error to the target. Where the
            target cannot be predicted exactly (a border that may fall on either side), L1 settles for the median of
            what it could be and the squared error for the mean, which is what PSNR and error removed score.
        lambda_adversarial (`float`, *optional*, defaults to 1.0): weight of the adversarial term; 0 trains no D.
        num_styles (`int`, *optional*, defaults to 0): for multi-style batches (``batch["style"]``), D's condition
            gets this many one-hot style planes after the photo (D then takes ``3 + num_styles`` condition channels).
    """

    gan_mode: str = "vanilla"
    lambda_l1: float = 100.0
    lambda_gradient: float = 0.0
    lambda_adversarial: float = 1.0
    lambda_gradient_distribution: float = 0.0
    lambda_mse: float = 0.0
    num_styles: int = 0

    # How the rest of the run adapts to this objective: D sees the input photo beside the image it judges.
    discriminator_condition_channels = 3
    discriminator_layout = "pix2pix"
    needs_smoothed_targets = False

    def __post_init__(self):
        _check_gan_mode(self.gan_mode)
        for name in (
            "lambda_l1",
            "lambda_gradient",
            "lambda_adversarial",
            "lambda_gradient_distribution",
            "lambda_mse",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")
        if not isinstance(self.num_styles, int) or self.num_styles < 0:
            raise ValueError(f"`num_styles` must be an int >= 0, got {self.num_styles!r}.")

    def condition(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What D sees beside the image it judges: the photo (B, 3, R, R), then one-hot style planes
        (B, num_styles, R, R) when ``num_styles`` > 0."""
        photo = batch["input"]
        if not self.num_styles:
            return photo
        one_hot = F.one_hot(batch["style"], self.num_styles).to(photo.dtype)  # (B, S)
        return torch.cat([photo, one_hot[:, :, None, None].expand(-1, -1, *photo.shape[-2:])], dim=1)

    @property
    def description(self) -> str:
        terms = [f"λ_L1 = {self.lambda_l1:g}"]
        if self.lambda_gradient:
            terms.append(f"λ_gradient = {self.lambda_gradient:g}")
        if self.lambda_gradient_distribution:
            terms.append(f"λ_gradient_distribution = {self.lambda_gradient_distribution:g}")
        if self.lambda_mse:
            terms.append(f"λ_MSE = {self.lambda_mse:g}")
        if not self.lambda_adversarial:
            return f"pix2pix without GAN ({', '.join(terms)})"
        if self.lambda_adversarial != 1:
            terms.append(f"λ_adversarial = {self.lambda_adversarial:g}")
        return f"pix2pix ({self.gan_mode} GAN, {', '.join(terms)})"

    def is_adversarial(self, step: int) -> bool:
        """Whether D trains and G gets the adversarial term at ``step``: always, unless ``lambda_adversarial`` is 0."""
        return self.lambda_adversarial > 0

    def discriminator_loss(
        self, discriminator: nn.Module, batch: dict[str, torch.Tensor], fake: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D's loss on real (photo, target) and fake (photo, G(photo)) pairs; ``fake`` is detached here."""
        condition, target = self.condition(batch), batch["target"]  # (B, 3 [+ S], R, R), (B, 3, R, R)
        real, fakes = discriminator(target, condition), [discriminator(fake.detach(), condition)]
        loss = discriminator_loss(real, fakes, self.gan_mode)
        return loss, {"loss_d": loss.detach()}

    def generator_loss(
        self, discriminator: nn.Module, batch: dict[str, torch.Tensor], fake: torch.Tensor, adversarial: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """λ_adv·adversarial(D(photo, G(photo))) + λ·L1(G(photo), target) + λ_grad·L1(∇G(photo), ∇target) + the
        other weighted terms; ``adversarial=False`` leaves out the first."""
        fake32, target32 = fake.float(), batch["target"].float()
        l1 = F.l1_loss(fake32, target32)
        logs = {"loss_g_l1": l1.detach()}
        loss = self.lambda_l1 * l1
        if self.lambda_mse:
            squared = F.mse_loss(fake32, target32)
            logs["loss_g_mse"] = squared.detach()
            loss = loss + self.lambda_mse * squared
        if self.lambda_gradient:
            gradient = gradient_loss(fake, batch["target"])
            logs["loss_g_gradient"] = gradient.detach()
            loss = loss + self.lambda_gradient * gradient
        if self.lambda_gradient_distribution:
            distribution = gradient_distribution_loss(fake, batch["target"])
            logs["loss_g_gradient_distribution"] = distribution.detach()
            loss = loss + self.lambda_gradient_distribution * distribution
        if adversarial:
            gan = generator_adversarial_loss(discriminator(fake, self.condition(batch)).float(), self.gan_mode)
            logs["loss_g_gan"] = gan.detach()
            loss = loss + self.lambda_adversarial * gan
        return loss, logs


@dataclass(frozen=True)
class CartoonGANObjective:
    r"""CartoonGAN's edge-promoting adversarial loss + ω·VGG19 content loss, after a content-only initialization.

    Args:
        vgg (`nn.Module`): frozen VGG19 features up to conv4_4 (`ghibligan.models.vgg.VGG19Features`), on the
            training device.
        gan_mode (`str`, *optional*, defaults to `"vanilla"`): ``"vanilla"``, ``"lsgan"`` or ``"hinge"``.
        lambda_content (`float`, *optional*, defaults to 10.0): weight ω of the content loss.
        init_steps (`int`, *optional*, defaults to 0): steps of the content loss alone before D trains.
    """

    vgg: nn.Module
    gan_mode: str = "vanilla"
    lambda_content: float = 10.0
    init_steps: int = 0

    # D is unconditional and also sees the edge-smoothed cartoons (``batch["target_smoothed"]``) as fake.
    discriminator_condition_channels = 0
    discriminator_layout = "cartoongan"
    needs_smoothed_targets = True

    def __post_init__(self):
        _check_gan_mode(self.gan_mode)
        if self.init_steps < 0:
            raise ValueError(f"`init_steps` must be >= 0, got {self.init_steps}.")

    @property
    def description(self) -> str:
        return f"cartoongan ({self.gan_mode} GAN, ω = {self.lambda_content:g})"

    def is_adversarial(self, step: int) -> bool:
        """False during the first ``init_steps`` steps, when G learns to reconstruct content only."""
        return step >= self.init_steps

    def discriminator_loss(
        self, discriminator: nn.Module, batch: dict[str, torch.Tensor], fake: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D's loss: cartoons are real; G(photo) and the cartoons with smoothed edges are fake."""
        fakes = [discriminator(fake.detach()), discriminator(batch["target_smoothed"])]
        loss = discriminator_loss(discriminator(batch["target"]), fakes, self.gan_mode)
        return loss, {"loss_d": loss.detach()}

    def generator_loss(
        self, discriminator: nn.Module, batch: dict[str, torch.Tensor], fake: torch.Tensor, adversarial: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """adversarial(D(G(photo))) + ω·content(G(photo), photo); ``adversarial=False`` is the initialization phase."""
        content = content_loss(self.vgg, fake, batch["input"]).float()
        logs = {"loss_g_content": content.detach()}
        loss = self.lambda_content * content
        if adversarial:
            gan = generator_adversarial_loss(discriminator(fake).float(), self.gan_mode)
            logs["loss_g_gan"] = gan.detach()
            loss = loss + gan
        return loss, logs


Objective = Pix2PixObjective | CartoonGANObjective
