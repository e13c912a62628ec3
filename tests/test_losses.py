"""The objectives, in-process: what each loss rewards and punishes, and the CartoonGAN initialization phase."""

import pytest
import torch
from torch import nn

from ghibligan.losses import (
    GAN_MODES,
    CartoonGANObjective,
    Pix2PixObjective,
    discriminator_loss,
    generator_adversarial_loss,
)


class Oracle(nn.Module):
    """A discriminator that scores images by their mean: bright (> 0) is "real", dark is "fake", with confidence
    ``scale``. With a condition it judges ``sample - condition`` instead, as a conditional D would."""

    def __init__(self, scale: float = 10.0):
        super().__init__()
        self.scale = scale
        self.calls = []

    def forward(self, sample, condition=None):
        self.calls.append(condition is not None)
        judged = sample if condition is None else sample - condition
        return self.scale * judged.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)


def batch(value_input=-0.5, value_target=0.5, smoothed=None):
    out = {"input": torch.full((2, 3, 8, 8), value_input), "target": torch.full((2, 3, 8, 8), value_target)}
    if smoothed is not None:
        out["target_smoothed"] = torch.full((2, 3, 8, 8), smoothed)
    return out


@pytest.mark.parametrize("mode", GAN_MODES)
def test_a_discriminator_that_tells_real_from_fake_has_a_lower_loss(mode):
    real, fake = torch.full((2, 1, 4, 4), 5.0), torch.full((2, 1, 4, 4), -5.0)
    assert discriminator_loss(real, fake, mode) < discriminator_loss(fake, real, mode)
    assert generator_adversarial_loss(real, mode) < generator_adversarial_loss(fake, mode)


def test_pix2pix_discriminator_judges_pairs_conditioned_on_the_photo():
    objective, oracle = Pix2PixObjective(), Oracle()
    fake = torch.full((2, 3, 8, 8), -1.0, requires_grad=True)
    loss, logs = objective.discriminator_loss(oracle, batch(), fake)
    assert oracle.calls == [True, True]  # both the real and the fake pair carry the photo
    assert set(logs) == {"loss_d"} and not logs["loss_d"].requires_grad
    assert loss.item() < 0.01  # target - photo = +1 is scored real, fake - photo = -0.5 fake: D is right
    confused, _ = objective.discriminator_loss(oracle, batch(value_target=-0.5), fake)
    assert confused > loss  # when the target equals the photo, D cannot tell, and its loss is higher


def test_bad_num_styles_is_named():
    with pytest.raises(ValueError, match="num_styles"):
        Pix2PixObjective(num_styles=-1)


def test_pix2pix_generator_loss_is_adversarial_plus_lambda_l1():
    objective, oracle = Pix2PixObjective(lambda_l1=100.0), Oracle(scale=1.0)
    data = batch()
    perfect = data["target"].clone()
    loss, logs = objective.generator_loss(oracle, data, perfect)
    assert logs["loss_g_l1"] == 0 and "loss_g_gan" in logs
    assert loss.item() == pytest.approx(logs["loss_g_gan"].item())
    off_by = data["target"] - 0.1
    loss_off, logs_off = objective.generator_loss(oracle, data, off_by)
    assert logs_off["loss_g_l1"].item() == pytest.approx(0.1)
    assert loss_off.item() == pytest.approx(logs_off["loss_g_gan"].item() + 100 * 0.1, rel=1e-5)
    l1_only, logs_l1 = objective.generator_loss(oracle, data, off_by, adversarial=False)
    assert "loss_g_gan" not in logs_l1 and l1_only.item() == pytest.approx(10.0, rel=1e-5)
    assert objective.is_adversarial(0) and objective.description == "pix2pix (vanilla GAN, λ_L1 = 100)"


def test_cartoongan_discriminator_counts_smoothed_edges_as_fake():
    objective, oracle = CartoonGANObjective(vgg=nn.Identity()), Oracle()
    fake = torch.full((2, 3, 8, 8), -1.0)
    sharp, _ = objective.discriminator_loss(oracle, batch(smoothed=-1.0), fake)  # smoothed cartoons look fake
    assert oracle.calls == [False, False, False]  # unconditional: target, G's output and the smoothed target
    fooled, _ = objective.discriminator_loss(oracle, batch(smoothed=1.0), fake)  # ... or exactly like the real ones
    assert sharp < fooled


def test_cartoongan_generator_keeps_content_and_starts_with_a_content_only_phase():
    objective = CartoonGANObjective(vgg=nn.AvgPool2d(2), lambda_content=10.0, init_steps=3)
    assert [objective.is_adversarial(step) for step in range(5)] == [False, False, False, True, True]
    oracle, data = Oracle(scale=1.0), batch()
    same, logs = objective.generator_loss(oracle, data, data["input"].clone(), adversarial=False)
    assert same.item() == 0 and set(logs) == {"loss_g_content"} and oracle.calls == []
    changed = data["input"] + 0.2
    loss, logs = objective.generator_loss(oracle, data, changed)
    assert logs["loss_g_content"].item() == pytest.approx(0.2)
    assert loss.item() == pytest.approx(logs["loss_g_gan"].item() + 10 * 0.2, rel=1e-5)


def test_the_content_loss_sends_gradients_to_the_generator_only():
    vgg = nn.Conv2d(3, 4, 3, padding=1).requires_grad_(False)
    objective = CartoonGANObjective(vgg=vgg)
    fake = torch.zeros(2, 3, 8, 8, requires_grad=True)
    loss, _ = objective.generator_loss(Oracle(), batch(), fake, adversarial=False)
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert vgg.weight.grad is None


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Pix2PixObjective(gan_mode="wgan"), "`gan_mode` must be one of"),
        (lambda: CartoonGANObjective(vgg=nn.Identity(), init_steps=-1), "`init_steps` must be >= 0"),
    ],
)
def test_bad_settings_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()
