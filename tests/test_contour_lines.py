"""Contour lines at the photo's size (`ghibligan.contour_lines`): the toon teacher's line stage, its fast
implementation (the same skeleton as OpenCV's thinning, guided filters within one grey level of OpenCV's), and the
pipeline inking a style with them from a model's ``contour_lines``."""

import dataclasses
import json

import cv2
import numpy as np
import pytest

from ghibligan import Cartoonizer, GuidedFilterGenerator
from ghibligan.contour_lines import (
    ContourLines,
    _guided_filter,
    apply_ink,
    draw_contour_lines,
    line_mask,
    numba,
    smooth_surface,
    thin,
)
from ghibligan.teachers.toon import PRESETS, toonify

from .helpers import photo_like, save_tiny_style_model

needs_numba = pytest.mark.skipif(numba is None, reason="the fast path needs numba")


def blobs(height: int, width: int, seed: int, sigma: float, level: float) -> np.ndarray:
    """A 0/1 image of smooth random blobs: thick shapes with holes, as a thresholded edge band is."""
    rng = np.random.default_rng(seed)
    field = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), sigma)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    return (field > level).astype(np.uint8)


def structured_photo(width: int = 640, height: int = 480) -> np.ndarray:
    """A photo-like image with objects: flat shapes with strong borders, thin bars, texture and noise."""
    rng = np.random.default_rng(3)
    image = photo_like(width, height).astype(np.float32)
    cv2.rectangle(image, (60, 50), (300, 260), (230, 210, 60), -1)
    cv2.circle(image, (450, 300), 120, (40, 60, 150), -1)
    cv2.line(image, (20, 420), (620, 380), (20, 20, 20), 5)
    cv2.ellipse(image, (200, 360), (150, 60), 15, 0, 360, (200, 90, 80), -1)
    patch = image[height * 5 // 8 : height * 23 // 24, width * 25 // 32 : width * 63 // 64]
    patch += rng.normal(0, 40, patch.shape)  # a textured patch: dense edges, no lines
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@needs_numba
@pytest.mark.parametrize("seed", range(6))
def test_the_fast_thinning_is_opencvs_zhang_suen(seed):
    """Bit-parallel Zhang-Suen: the same skeleton as ``cv2.ximgproc.thinning`` on blobs with holes, noise, thin lines,
    shapes touching the border and widths across word boundaries (63, 64, 65, 130 pixels)."""
    rng = np.random.default_rng(seed)
    shapes = [
        blobs(int(rng.integers(40, 200)), width, seed, float(rng.uniform(1, 6)), float(rng.uniform(0.3, 0.6)))
        for width in (63, 64, 65, 130, int(rng.integers(3, 300)))
    ]
    shapes.append((rng.random((50, 97)) < 0.6).astype(np.uint8))  # dense noise
    lines = np.zeros((80, 200), np.uint8)
    cv2.line(lines, (0, 5), (199, 70), 1, 1)
    cv2.circle(lines, (100, 40), 30, 1, 7)
    shapes.append(lines)
    for shape in shapes:
        expected = cv2.ximgproc.thinning(shape * 255) // 255
        assert np.array_equal(thin(shape), expected), shape.shape
    assert np.array_equal(thin(np.ones((2, 5), np.uint8)), np.ones((2, 5), np.uint8))  # too small to thin


@needs_numba
@pytest.mark.parametrize("radius, eps", [(1, 20.0), (4, (0.08 * 255) ** 2), (8, (0.04 * 255) ** 2)])
def test_the_fast_guided_filters_are_opencvs_to_one_grey_level(radius, eps):
    """The self-guided filter of a gray and of an RGB image: OpenCV's arithmetic, reordered (alpha = 1 - eps Σ⁻¹),
    so a rare pixel rounds the other way."""
    rgb = structured_photo(257, 190)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for image in (gray, rgb):
        fast = _guided_filter(image, radius, eps, fast=True).astype(int)
        reference = cv2.ximgproc.guidedFilter(image, image, radius, eps).astype(int)
        assert fast.shape == reference.shape
        assert np.abs(fast - reference).max() <= 1 and (fast != reference).mean() < 1e-3


@needs_numba
def test_the_pipelines_lines_are_the_teachers():
    """`draw_contour_lines` (fast) finds the lines the toon teacher's own stage finds (OpenCV), and the teacher inks
    its cartoon with exactly them; a textured patch gets none and a clean border does."""
    rgb = structured_photo()
    lines = PRESETS["toon"].contour_lines()
    reference = line_mask(smooth_surface(rgb, lines.smooth_radius, lines.smooth_eps, lines.bilateral_passes), lines)
    fast = draw_contour_lines(rgb, lines, fast=True)
    inked, reference_inked = fast > 0.2, reference > 0.2  # (a one-pixel line, anti-aliased: 0.5)
    assert reference_inked.mean() > 0.005  # the test image has lines at all
    assert (inked & reference_inked).sum() / (inked | reference_inked).sum() > 0.99
    assert not reference_inked[330:450, 530:620].any()  # the texture
    assert reference_inked[50:260, 295:306].any()  # the rectangle's right border
    teacher = toonify(rgb, PRESETS["toon"]).astype(int)
    without = toonify(rgb, dataclasses.replace(PRESETS["toon"], line_strength=0.0)).astype(int)
    assert np.array_equal(teacher[reference == 0], without[reference == 0])
    assert (teacher[reference_inked].sum(-1) < without[reference_inked].sum(-1)).mean() > 0.95


@pytest.mark.parametrize(
    "settings",
    [{"line_width": 0}, {"line_width": 2.5}, {"line_threshold": float("nan")}, {"line_strength": True},
     {"smooth_radius": 1000}, {"texture_density": "0.1"}, {"ink": 1}, ["line_width"]],
)  # fmt: skip
def test_hostile_line_settings_are_refused(tmp_path, settings):
    with pytest.raises(ValueError, match="ContourLines"):
        ContourLines.from_dict(settings)
    with pytest.raises(ValueError, match="contour_lines"):
        GuidedFilterGenerator(styles=["ghibli", "toon"], contour_lines={"toon": settings})
    path = save_tiny_style_model(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "contour_lines": {"toon": settings}}))
    with pytest.raises(ValueError, match="contour_lines"):
        Cartoonizer.from_pretrained(path, device="cpu")


def test_contour_lines_of_an_unknown_style_are_refused():
    with pytest.raises(ValueError, match="contour_lines"):
        GuidedFilterGenerator(styles=["ghibli", "toon"], contour_lines={"anime": {}})
    with pytest.raises(ValueError, match="contour_lines"):
        GuidedFilterGenerator(styles=["ghibli", "toon"], contour_lines=[{"line_width": 2}])


@pytest.fixture(scope="module")
def lines_dir(tmp_path_factory):
    settings = PRESETS["toon"].contour_lines().to_dict()
    return save_tiny_style_model(
        tmp_path_factory.mktemp("lines") / "ckpt", contour_lines={"toon": settings}, work_sides={"toon": 320}
    )


def test_the_pipeline_inks_a_style_with_its_teachers_lines_at_the_photos_size(lines_dir):
    """`contour_lines`: the cartoon in that style is the cartoon without lines with the teacher's ink blended in,
    found in the photo at its own size, after the upsampling from the work side; other styles get none unless asked
    (``contour_lines=True``), and ``contour_lines=False`` draws none."""
    pipe = Cartoonizer.from_pretrained(lines_dir, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    lines = pipe.line_settings("toon")
    assert lines == PRESETS["toon"].contour_lines() and pipe.line_settings("ghibli") is None
    assert pipe.line_settings("ghibli", True) == ContourLines() and pipe.line_settings("toon", False) is None
    photo = structured_photo()  # 640 px: drawn at 320 px and upsampled
    plain = np.asarray(pipe(photo, style="toon", contour_lines=False)[0])
    mask = draw_contour_lines(photo, lines)
    inked = np.asarray(pipe(photo, style="toon")[0])
    assert np.array_equal(inked, apply_ink(plain, mask, lines.line_strength))
    assert (mask > 0.2).mean() > 0.005 and inked[mask > 0.4].mean() < 0.7 * plain[mask > 0.4].mean()
    assert np.array_equal(inked[mask == 0], plain[mask == 0])
    ghibli = np.asarray(pipe(photo, style="ghibli")[0])
    assert np.array_equal(np.asarray(pipe(photo, style="ghibli", contour_lines=False)[0]), ghibli)
    assert np.array_equal(
        np.asarray(pipe(photo, style="ghibli", contour_lines=True)[0]),
        apply_ink(ghibli, draw_contour_lines(photo, ContourLines()), ContourLines().line_strength),
    )
    with pytest.raises(ValueError, match="`contour_lines` must be None"):
        pipe(photo, style="toon", contour_lines="yes")


@needs_numba
def test_a_zero_eps_takes_opencvs_filter_and_a_teachers_lenient_settings_still_draw():
    """eps 0 (allowed: no regularization) would divide zero by zero in a flat window: it takes OpenCV's filter, so a
    flat photo stays itself. A teacher's own config is not held to the untrusted bounds (line_min_length 0 draws as
    1 did, and numpy scalars are fine); `apply_ink` refuses a mask of another size."""
    flat = np.full((64, 64, 3), 255, np.uint8)
    flat[20:40, 20:40] = (10, 200, 30)
    assert np.array_equal(_guided_filter(flat, 2, 0.0, fast=True), cv2.ximgproc.guidedFilter(flat, flat, 2, 0.0))
    lenient = dataclasses.replace(PRESETS["toon"], line_min_length=0, smooth_radius=np.int64(8))
    assert np.array_equal(toonify(structured_photo(), lenient), toonify(structured_photo(),
                          dataclasses.replace(PRESETS["toon"], line_min_length=1)))  # fmt: skip
    with pytest.raises(ValueError, match="apply_ink"):
        apply_ink(flat, np.zeros((64, 65), np.float32), 0.85)
