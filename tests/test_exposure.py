"""Exposure normalization (`ghibligan.exposure`): the ghibli teacher and the pipeline draw a dark photo as if it
were normally exposed, and darken the drawing back."""

import json

import cv2
import numpy as np
import pytest

from ghibligan import Cartoonizer, GuidedFilterGenerator
from ghibligan.exposure import (
    LINEAR_LUMA,
    MAX_EXPOSURE_GAIN,
    brighten,
    check_exposure_target,
    darken,
    exposure_gain,
    to_linear,
    to_srgb,
)
from ghibligan.teachers.ghibli import GhibliConfig, ghiblify

from .helpers import photo_like, save_tiny_style_model, underexposed


def brightest(rgb: np.ndarray) -> float:
    """The 99th-percentile luminance (linear light) of a uint8 RGB image, measured as `exposure_gain` does."""
    height, width = rgb.shape[:2]
    scale = min(1.0, 128 / max(height, width))
    small = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    return float(np.percentile(to_linear(small.reshape(-1, 3) / 255.0) @ LINEAR_LUMA, 99))


def test_gain_brings_a_dark_photos_brightest_tones_to_the_target_and_leaves_a_bright_one():
    photo = photo_like(160, 120)
    assert exposure_gain(photo, 0.39) == 1.0  # normally exposed: untouched
    assert brighten(photo, 1.0) is photo and darken(photo, 1.0) is photo
    dark = underexposed(photo, 2)
    gain = exposure_gain(dark, 0.39)
    assert 1.5 < gain < MAX_EXPOSURE_GAIN
    assert abs(brightest(brighten(dark, gain)) - 0.39) < 0.02
    assert exposure_gain(np.zeros((8, 8, 3), np.uint8), 0.39) == MAX_EXPOSURE_GAIN  # black: capped, not infinite
    assert exposure_gain(dark, 0.0) == 1.0  # off
    # measured on a fixed-size downsample: the photo and its half-size copy get the same gain
    half = cv2.resize(dark, (80, 60), interpolation=cv2.INTER_AREA)
    assert abs(exposure_gain(half, 0.39) - gain) < 0.02 * gain
    with pytest.raises(ValueError, match="uint8 RGB"):
        exposure_gain(dark[..., 0], 0.39)


def test_brighten_keeps_highlights_and_darken_undoes_it():
    """The curve lifts shadows by the gain, keeps white white (a lamp in a night photo is not clipped to grey), and
    `darken` inverts it: exactly in float, within a grey level or two through uint8 at the dark end."""
    levels = np.linspace(0, 1, 101, dtype=np.float32)[:, None, None].repeat(3, -1)
    bright = brighten(levels, 3.0)
    assert bright[-1].min() > 0.999 and np.all(np.diff(bright[:, 0, 0]) > 0)  # white stays white, order kept
    linear = to_linear(levels[1:6])
    np.testing.assert_allclose(to_linear(bright[1:6]) / linear, 3.0, rtol=0.02)  # shadows: the gain
    np.testing.assert_allclose(darken(bright, 3.0), levels, atol=1e-5)
    photo = photo_like(64, 48)
    dark = underexposed(photo, 1.5)
    gain = exposure_gain(dark, 0.39)
    assert np.abs(darken(brighten(dark, gain), gain).astype(int) - dark).max() <= 2
    assert np.abs(brighten(dark, gain).astype(np.float32) - brighten(dark / 255.0, gain) * 255).max() <= 0.5 + 1e-3
    np.testing.assert_allclose(to_srgb(to_linear(np.linspace(0, 1, 11))), np.linspace(0, 1, 11), atol=1e-5)
    for gain in (float("nan"), 0.5, float("inf")):
        with pytest.raises(ValueError, match="gain"):
            brighten(photo, gain)


@pytest.mark.parametrize("target", [-0.1, 1.5, float("nan"), True, "0.4", None])
def test_a_bad_exposure_target_is_refused(target):
    with pytest.raises(ValueError, match="exposure target"):
        check_exposure_target(target)


def test_the_ghibli_teacher_draws_a_dark_photo_as_the_brightened_one_darkened():
    """Two stops under, the teacher draws the photo brightened and darkens its whole drawing, ink included, back (so
    a dark photo keeps its regions); without the normalization its thresholds merge it into fewer, greyer regions. A
    photo bright enough is drawn exactly as before."""
    photo = photo_like(192, 128, seed=3)
    photo = np.round(to_srgb(to_linear(photo / 255.0) * 0.40 / brightest(photo)) * 255).astype(np.uint8)
    config = GhibliConfig(region_runs=2)
    assert exposure_gain(photo, config.exposure_target) == 1.0  # just bright enough
    assert np.array_equal(ghiblify(photo, config), ghiblify(photo, GhibliConfig(region_runs=2, exposure_target=0)))
    dark = underexposed(photo, 2)
    gain = exposure_gain(dark, config.exposure_target)
    assert gain > 3
    off = GhibliConfig(region_runs=2, exposure_target=0.0)
    expected = darken(ghiblify(brighten(dark, gain), off), gain).astype(np.float64)
    assert np.abs(ghiblify(dark, config).astype(np.float64) - expected).max() <= 1  # rounding of the two LUTs
    normal = underexposed(ghiblify(photo, config), 2).astype(np.float64)  # the photo's drawing, 2 stops under
    error = np.abs(ghiblify(dark, config).astype(np.float64) - normal).mean()
    error_plain = np.abs(ghiblify(dark, off).astype(np.float64) - normal).mean()
    assert error < 0.5 * error_plain, (error, error_plain)


@pytest.fixture(scope="module")
def exposure_dir(tmp_path_factory):
    return save_tiny_style_model(tmp_path_factory.mktemp("exposure") / "ckpt", exposure_targets={"ghibli": 0.39})


def drawn(pipe, image, **kwargs) -> np.ndarray:
    return np.asarray(pipe(image, **kwargs)[0])


def test_the_pipeline_draws_a_dark_photo_brightened_and_darkens_the_cartoon_back(exposure_dir):
    """`exposure_targets`: a dark photo in that style is brightened to the target, drawn, and the cartoon darkened by
    the same curve; a bright photo, the other styles and ``exposure_target=0`` are drawn as they are. In a batch of
    equal-sized photos each gets its own gain, and a photo drawn at a work side is darkened after the upsampling."""
    pipe = Cartoonizer.from_pretrained(exposure_dir, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.exposure_targets == {"ghibli": 0.39}
    assert pipe.exposure_target() == pipe.exposure_target("ghibli") == 0.39
    assert pipe.exposure_target("toon") == 0.0 and pipe.exposure_target("ghibli", 0) == 0.0
    photo = photo_like(96, 64)
    dark = underexposed(photo, 2)
    gain = exposure_gain(dark, 0.39)
    cartoon = drawn(pipe, dark, style="ghibli")
    assert np.array_equal(cartoon, darken(drawn(pipe, brighten(dark, gain), style="ghibli", exposure_target=0), gain))
    assert np.abs(cartoon.astype(np.float64) - drawn(pipe, dark, style="ghibli", exposure_target=0)).mean() > 0.5
    assert np.array_equal(drawn(pipe, dark, style="toon"), drawn(pipe, dark, style="toon", exposure_target=0))
    assert np.array_equal(drawn(pipe, photo, style="ghibli"), drawn(pipe, photo, style="ghibli", exposure_target=0))
    batch = pipe([dark, photo], style="ghibli")  # one pass of two equal-sized photos, gains 3+ and 1
    assert np.array_equal(np.asarray(batch[0]), cartoon) and np.array_equal(np.asarray(batch[1]), drawn(pipe, photo))
    # drawn at 64 px and upsampled (a work side), then darkened: the teacher's order
    large = underexposed(photo_like(192, 128), 2)
    small = cv2.resize(drawn(pipe, brighten(large, exposure_gain(large, 0.39)), work_side=64, exposure_target=0),
                       (192, 128), interpolation=cv2.INTER_LINEAR)  # fmt: skip
    expected = darken(small, exposure_gain(large, 0.39))
    # (the gain is measured on the 64-px copy the generator sees: within a few percent of the full photo's)
    assert np.abs(drawn(pipe, large, work_side=64).astype(int) - expected).mean() < 1.0
    with pytest.raises(ValueError, match="`exposure_target` must be None"):
        pipe(photo, exposure_target=2.0)


@pytest.mark.parametrize(
    "exposure_targets", [{"anime": 0.4}, {"ghibli": 1.5}, {"ghibli": 0}, {"ghibli": "0.4"}, {"ghibli": True}, [0.4]]
)
def test_a_hostile_exposure_targets_config_is_refused(tmp_path, exposure_targets):
    with pytest.raises(ValueError, match="exposure_targets"):
        GuidedFilterGenerator(styles=["ghibli", "toon"], exposure_targets=exposure_targets)
    path = save_tiny_style_model(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "exposure_targets": exposure_targets}))
    with pytest.raises(ValueError, match="exposure_targets"):
        Cartoonizer.from_pretrained(path, device="cpu")
