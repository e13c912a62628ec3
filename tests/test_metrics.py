"""Structure metrics on synthetic images whose right answer is known."""

import numpy as np
import pytest

from ghibligan import metrics


def flat(value=128, size=(64, 64)):
    return np.full((*size, 3), value, np.uint8)


def checkerboard(size=64, cell=2, low=0, high=255):
    y, x = np.mgrid[0:size, 0:size] // cell
    return np.repeat(np.where((x + y) % 2 == 0, low, high).astype(np.uint8)[..., None], 3, axis=2)


def ramp(slope: float, size=64):
    """A horizontal luma ramp rising by ``slope`` grey levels per pixel."""
    row = np.clip(20 + slope * np.arange(size), 0, 255)
    return np.repeat(np.repeat(row[None, :, None], size, axis=0), 3, axis=2).round().astype(np.uint8)


def test_flat_share_and_gradient_energy_on_known_images():
    assert metrics.flat_share(flat()) == 1.0 and metrics.gradient_energy(flat()) == 0.0
    assert metrics.flat_share(checkerboard()) < 0.01
    assert metrics.flat_share(checkerboard(cell=1)) == 1.0  # the 3x3 Sobel's blind spot: its Nyquist frequency
    # a ramp of s grey levels per pixel has Sobel magnitude 8 s: flat below 1 level per pixel, textured above
    assert metrics.flat_share(ramp(0.25)) == 1.0  # (0.5 would round to steps of 2 levels over 2 px in places)
    assert metrics.flat_share(ramp(2.0)) < 0.1
    assert metrics.gradient_energy(ramp(2.0)) == pytest.approx(16.0, rel=0.1)
    half = flat(40)
    half[:, 32:] = 200  # one vertical edge: only the two columns beside it are not flat
    assert metrics.flat_share(half) == pytest.approx(62 / 64)


def test_palette_size_counts_colours_at_5_bits():
    assert metrics.palette_size(flat()) == 1
    assert metrics.palette_size(checkerboard()) == 2
    near = flat(128)
    near[:, 32:] = 130  # differs only in the 3 low bits: the same 5-bit colour
    assert metrics.palette_size(near) == 1
    rng = np.random.default_rng(0)
    assert metrics.palette_size(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) > 10_000
    with pytest.raises(ValueError, match="bits"):
        metrics.palette_size(flat(), bits=0)


def test_ink_mask_finds_thin_dark_lines_not_dark_areas():
    image = flat(220, (80, 80))
    image[:, 20] = 10  # a 1-px ink line
    image[:, 50:] = 10  # a wide dark area
    mask = metrics.ink_mask(image)
    assert mask[:, 20].all()
    assert not mask[:, 55:].any() and not mask[:, :19].any()


def test_ink_f_score_matches_within_one_pixel():
    line = flat(220, (80, 80))
    line[:, 20] = 10
    shifted, far = flat(220, (80, 80)), flat(220, (80, 80))
    shifted[:, 21] = 10
    far[:, 40] = 10
    assert metrics.ink_f_score(line, line) == 1.0
    assert metrics.ink_f_score(shifted, line) == 1.0  # 1 px away still agrees
    assert metrics.ink_f_score(far, line) == 0.0
    assert metrics.ink_f_score(flat(), flat()) == 1.0  # neither has ink
    assert metrics.ink_f_score(flat(220, (80, 80)), line) == 0.0
    half = flat(220, (80, 80))
    half[:40, 20] = 10  # half the line: precision 1, recall 0.5
    assert metrics.ink_f_score(half, line) == pytest.approx(2 * 0.5 / 1.5, abs=0.03)


def test_psnr_ssim_and_structure_metrics():
    rng = np.random.default_rng(1)
    photo = ramp(1.0, 48)
    assert metrics.ssim(photo, photo) == pytest.approx(1.0)
    noisy = np.clip(photo.astype(int) + rng.integers(-20, 21, photo.shape), 0, 255).astype(np.uint8)
    assert 20 < metrics.psnr(noisy, photo) < 30 and metrics.ssim(noisy, photo) < 0.8
    summary = metrics.structure_metrics(flat(size=(48, 48)), photo=photo, teacher=photo)
    assert summary["flat_share"] == 1.0 and summary["gradient_energy_vs_photo"] == 0.0
    assert summary["palette_size"] == 1 and summary["ink_f_score"] in (0.0, 1.0)
    with pytest.raises(ValueError, match="uint8 RGB"):
        metrics.flat_share(np.zeros((8, 8), np.float32))
