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
    gradient_distribution_loss,
    luma_sobel_magnitude,
)
from ghibligan.metrics import flat_share, sobel_magnitude


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


def step_image(edge: int, size: int = 32) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1]: dark left of column ``edge``, light from it on."""
    image = torch.full((1, 3, size, size), -0.6)
    image[..., edge:] = 0.6
    return image


def test_luma_sobel_magnitude_is_the_metrics_sobel_in_model_units():
    image = torch.rand(1, 3, 20, 24) * 2 - 1
    pixels = ((image[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    # the metric's luma is uint8 (cv2), so compare on an image whose luma the rounding barely moves: tolerance 2 levels
    reference = sobel_magnitude(pixels)[1:-1, 1:-1] / 127.5
    ours = luma_sobel_magnitude(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1)[0, 0]
    assert ours.shape == (18, 22)
    assert torch.allclose(ours, torch.from_numpy(reference), atol=2 * 8 / 127.5)


def test_the_gradient_distribution_loss_wants_the_targets_edges_wherever_they_are():
    target = step_image(edge=12)
    moved, blurred = step_image(edge=20), torch.nn.functional.avg_pool2d(target, 7, stride=1, padding=3)
    assert gradient_distribution_loss(target + 0.2, target) < 1e-6  # a colour shift has the same edges
    # the edge 8 px off: far in L1, the same distribution of edge strengths
    assert gradient_distribution_loss(moved, target) < 1e-6 < torch.nn.functional.l1_loss(moved, target)
    # the edge blurred: close in L1, but many pixels on a ramp and no sharp edge
    assert gradient_distribution_loss(blurred, target) > 10 * gradient_distribution_loss(moved, target) + 0.01
    assert torch.nn.functional.l1_loss(blurred, target) < torch.nn.functional.l1_loss(moved, target)


def test_descending_the_gradient_distribution_loss_sharpens_a_blurred_edge():
    target = step_image(edge=16)
    blurred = torch.nn.functional.avg_pool2d(target, 9, stride=1, padding=4, count_include_pad=False)
    image = blurred.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=0.01)
    for _ in range(200):
        optimizer.zero_grad()
        gradient_distribution_loss(image, target).backward()
        optimizer.step()

    def flat(x):
        return flat_share(((x[0].detach().clamp(-1, 1).permute(1, 2, 0) + 1) * 127.5).byte().numpy())

    assert flat(blurred) < 0.7 and flat(image) > flat(blurred) + 0.1  # the ramp became flat sides and a border
    assert gradient_distribution_loss(image, target) < 0.5 * gradient_distribution_loss(blurred, target)


def test_the_pix2pix_objective_adds_the_gradient_distribution_term_at_its_weight():
    target, fake = step_image(edge=16), torch.nn.functional.avg_pool2d(step_image(edge=16), 5, stride=1, padding=2)
    objective = Pix2PixObjective(lambda_l1=1, lambda_gradient_distribution=3, lambda_adversarial=0)
    loss, logs = objective.generator_loss(None, {"input": target, "target": target}, fake, adversarial=False)
    assert set(logs) == {"loss_g_l1", "loss_g_gradient_distribution"}
    assert torch.isclose(loss, logs["loss_g_l1"] + 3 * logs["loss_g_gradient_distribution"])
    assert "λ_gradient_distribution = 3" in objective.description


def test_the_pix2pix_objective_adds_the_squared_error_at_its_weight():
    target, fake = step_image(edge=16), torch.nn.functional.avg_pool2d(step_image(edge=16), 5, stride=1, padding=2)
    objective = Pix2PixObjective(lambda_l1=1, lambda_mse=4, lambda_adversarial=0)
    loss, logs = objective.generator_loss(None, {"input": target, "target": target}, fake, adversarial=False)
    assert set(logs) == {"loss_g_l1", "loss_g_mse"}
    assert torch.isclose(logs["loss_g_mse"], ((fake - target) ** 2).mean())
    assert torch.isclose(loss, logs["loss_g_l1"] + 4 * logs["loss_g_mse"])
    assert "λ_MSE = 4" in objective.description


@pytest.mark.parametrize("weights, expected", [({"lambda_l1": 1}, -1.0), ({"lambda_l1": 0, "lambda_mse": 1}, -0.2)])
def test_l1_fits_the_median_of_an_unpredictable_target_and_the_squared_error_its_mean(weights, expected):
    """A border that falls on either side: 60 % of the targets are -1 and 40 % are +1 for the same input. The constant
    L1 settles for is the median (-1), the one the squared error (and PSNR) prefers the mean (-0.2)."""
    target = torch.cat([torch.full((1, 3, 6, 10), -1.0), torch.full((1, 3, 4, 10), 1.0)], dim=2)
    value = torch.zeros(1, requires_grad=True)
    objective = Pix2PixObjective(lambda_adversarial=0, **weights)
    optimizer = torch.optim.Adam([value], lr=0.02)
    for _ in range(300):
        optimizer.zero_grad()
        fake = value.view(1, 1, 1, 1).expand_as(target)
        objective.generator_loss(None, {"input": target, "target": target}, fake, adversarial=False)[0].backward()
        optimizer.step()
    assert abs(value.item() - expected) < 0.05


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Pix2PixObjective(gan_mode="wgan"), "`gan_mode` must be one of"),
        (lambda: Pix2PixObjective(lambda_gradient_distribution=-1), "`lambda_gradient_distribution` must be >= 0"),
        (lambda: Pix2PixObjective(lambda_mse=float("nan")), "`lambda_mse` must be >= 0"),
        (lambda: CartoonGANObjective(vgg=nn.Identity(), init_steps=-1), "`init_steps` must be >= 0"),
    ],
)
def test_bad_settings_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()
