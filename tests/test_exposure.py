"""Exposure normalization (`ghibligan.exposure`): the ghibli teacher and the pipeline draw a dark photo as if it
were normally exposed, and darken the drawing back."""

import json

import numpy as np
import pytest

from ghibligan import Cartoonizer, GuidedFilterGenerator
from ghibligan.exposure import MAX_EXPOSURE_GAIN, check_exposure_target, expose, exposure_gain, to_linear, to_srgb
from ghibligan.teachers.ghibli import GhibliConfig, ghiblify

from .helpers import photo_like, save_tiny_style_model


def darker(rgb: np.ndarray, stops: float) -> np.ndarray:
    """A photo taken ``stops`` under: linear light times 2**-stops."""
    return expose(rgb, 2.0**-stops)


def test_gain_brings_a_dark_photos_brightest_tones_to_the_target_and_leaves_a_bright_one():
    photo = photo_like(160, 120)
    assert exposure_gain(photo, 0.45) == 1.0  # normally exposed: untouched
    assert expose(photo, 1.0) is photo
    dark = darker(photo, 2)
    gain = exposure_gain(dark, 0.45)
    assert 1.5 < gain < MAX_EXPOSURE_GAIN
    brightened = expose(dark, gain)
    luminance = to_linear(brightened[::4, ::4].reshape(-1, 3) / 255.0) @ np.array([0.2126, 0.7152, 0.0722])
    assert abs(np.percentile(luminance, 99) - 0.45) < 0.02
    assert exposure_gain(np.zeros((8, 8, 3), np.uint8), 0.45) == MAX_EXPOSURE_GAIN  # black: capped, not infinite
    assert exposure_gain(dark, 0.0) == 1.0  # off


def test_expose_is_the_same_for_uint8_and_float_and_undoes_itself_below_clipping():
    photo = photo_like(64, 48)
    as_float = expose(photo.astype(np.float32) / 255, 2.5)
    assert np.abs(expose(photo, 2.5).astype(np.float32) - as_float * 255).max() <= 0.5 + 1e-3  # the LUT rounds
    dark = darker(photo, 1.5)
    back = expose(dark, 2**1.5)
    assert np.abs(back.astype(int) - photo).mean() < 1.5  # quantized once at the dark end
    np.testing.assert_allclose(to_srgb(to_linear(np.linspace(0, 1, 11))), np.linspace(0, 1, 11), atol=1e-5)
    with pytest.raises(ValueError, match="gain"):
        expose(photo, float("nan"))


@pytest.mark.parametrize("target", [-0.1, 1.5, float("nan"), True, "0.4", None])
def test_a_bad_exposure_target_is_refused(target):
    with pytest.raises(ValueError, match="exposure target"):
        check_exposure_target(target)


def test_the_ghibli_teacher_draws_a_dark_photo_as_the_normal_one_darkened():
    """Two stops under, without the normalization the teacher's thresholds merge the photo into fewer, greyer
    regions; with it, its drawing is close to its drawing of the normal photo, darkened."""
    photo = photo_like(192, 128, seed=3)
    brightest = 1 / exposure_gain(photo, 1.0, max_gain=64)  # its 99th-percentile luminance
    photo = expose(photo, 0.46 / brightest)  # exposed just bright enough for a gain of 1
    assert exposure_gain(photo, 0.45) == 1.0
    config = GhibliConfig(region_runs=2)
    expected = darker(ghiblify(photo, config), 2).astype(np.float64)
    dark = darker(photo, 2)
    normalized = ghiblify(dark, config).astype(np.float64)
    plain = ghiblify(dark, GhibliConfig(region_runs=2, exposure_target=0.0)).astype(np.float64)
    error, error_plain = np.abs(normalized - expected).mean(), np.abs(plain - expected).mean()
    assert error < 0.4 * error_plain, (error, error_plain)  # measured: 2.2 against 9.1 grey levels
    assert np.array_equal(ghiblify(photo, config), ghiblify(photo, GhibliConfig(region_runs=2, exposure_target=0)))


@pytest.fixture(scope="module")
def exposure_dir(tmp_path_factory):
    return save_tiny_style_model(tmp_path_factory.mktemp("exposure") / "ckpt", exposure_targets={"ghibli": 0.45})


def test_the_pipeline_draws_a_dark_photo_brightened_and_darkens_the_cartoon_back(exposure_dir):
    """`exposure_targets`: a dark photo in that style is brightened to the target, drawn, and the cartoon darkened by
    the same gain; a bright photo, the other styles and ``exposure_target=0`` are drawn as they are."""
    pipe = Cartoonizer.from_pretrained(exposure_dir, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.exposure_targets == {"ghibli": 0.45}
    assert pipe.exposure_target() == pipe.exposure_target("ghibli") == 0.45
    assert pipe.exposure_target("toon") == 0.0 and pipe.exposure_target("ghibli", 0) == 0.0
    photo = photo_like(96, 64)
    dark = darker(photo, 2)
    gain = exposure_gain(dark, 0.45)
    (drawn,) = pipe(dark, style="ghibli")
    (plain,) = pipe(dark, style="ghibli", exposure_target=0)
    (bright_drawn,) = pipe(expose(dark, gain), style="ghibli", exposure_target=0)
    assert np.array_equal(np.asarray(drawn), expose(np.asarray(bright_drawn), 1 / gain))
    assert np.abs(np.asarray(drawn, np.float64) - np.asarray(plain, np.float64)).mean() > 0.5
    assert np.array_equal(
        np.asarray(pipe(dark, style="toon")[0]), np.asarray(pipe(dark, style="toon", exposure_target=0)[0])
    )
    assert np.array_equal(
        np.asarray(pipe(photo, style="ghibli")[0]), np.asarray(pipe(photo, style="ghibli", exposure_target=0)[0])
    )
    with pytest.raises(ValueError, match="`exposure_target`"):
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
