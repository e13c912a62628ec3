"""Edge-aware upsampling from the work side (`ghibligan.upsampling`): borders as sharp as the photo's edges, the
bilinear resize where the guide is flat, the numba and numpy paths alike, hostile settings refused, and the pipeline
upsampling a model's `joint_upsampling` styles with it (guided by the toon line stage's smoothed photo where it made
one)."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from ghibligan import Cartoonizer, GuidedFilterGenerator
from ghibligan.contour_lines import ContourLines, apply_ink, draw_contour_lines, line_surface
from ghibligan.image_io import resize_to_max_side
from ghibligan.models import cpu_kernels
from ghibligan.upsampling import DEFAULT_UPSAMPLING_SIGMA, joint_bilateral_upsample
from ghibligan.upsampling import njit as numba_jit

from .helpers import photo_like, save_tiny_style_model

needs_numba = pytest.mark.skipif(numba_jit is None, reason="the kernel needs numba")


class _kernels:
    """The CPU kernels on (as they are) or off (`cpu_kernels.disabled`) in a ``with``."""

    def __init__(self, on: bool):
        self.context = None if on else cpu_kernels.disabled()

    def __enter__(self):
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc):
        if self.context is not None:
            self.context.__exit__(*exc)


def edge_photo(width: int = 257, height: int = 90, edge: int = 101) -> np.ndarray:
    """A photo with one sharp vertical edge at an odd column (it falls inside a low-resolution pixel), a gentle
    texture on both sides."""
    rng = np.random.default_rng(0)
    photo = np.empty((height, width, 3), np.float32)
    photo[:, :edge] = (200, 170, 60)
    photo[:, edge:] = (40, 70, 150)
    photo += rng.normal(0, 3, photo.shape)
    return np.clip(photo + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kernels", [True, False])
def test_a_drawn_border_comes_out_as_sharp_as_the_photos_edge(kernels):
    """A cartoon drawn at half size, two flat colours split where the photo's edge falls: bilinear upsampling makes
    a ramp of mixed colours 2-3 pixels wide; joint bilateral upsampling puts every pixel on its side of the photo's
    edge, flat on both sides (a convex mix of drawn colours: no new ones, no overshoot)."""
    photo = edge_photo()
    small = cv2.resize(photo, (129, 45), interpolation=cv2.INTER_AREA)
    cartoon = np.where((small.astype(int).sum(-1) > 300)[..., None], (230, 200, 40), (20, 40, 160)).astype(np.uint8)
    with _kernels(kernels):
        crisp = joint_bilateral_upsample(cartoon, small, photo, sigma=24)
    blurred = cv2.resize(cartoon, (photo.shape[1], photo.shape[0]), interpolation=cv2.INTER_LINEAR)
    left, right = np.array([230, 200, 40]), np.array([20, 40, 160])

    def mixed(image: np.ndarray) -> int:  # columns (of the middle row) with neither drawn colour
        row = image[45].astype(int)
        return int(((np.abs(row - left).max(-1) > 2) & (np.abs(row - right).max(-1) > 2)).sum())

    assert mixed(blurred) >= 2 and mixed(crisp) == 0
    assert (np.abs(crisp[:, :101].astype(int) - left).max() <= 1) and (np.abs(crisp[:, 101:] - right).max() <= 1)


@pytest.mark.parametrize("size", [(333, 237), (1030, 61), (40, 40)])
def test_where_the_guide_is_flat_it_is_the_bilinear_resize(size):
    """Equal range weights leave the bilinear weights: OpenCV's INTER_LINEAR resize to a grey level, at any ratio
    (the taps are OpenCV's half-pixel centres, clamped at the borders)."""
    image = photo_like(100, 37, seed=2) if size != (40, 40) else photo_like(40, 40, seed=2)
    flat_low, flat = np.full_like(image, 128), np.full((size[1], size[0], 3), 128, np.uint8)
    for kernels in (True, False):
        with _kernels(kernels):
            got = joint_bilateral_upsample(image, flat_low, flat, sigma=10).astype(int)
        assert np.abs(got - cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)).max() <= 1


@needs_numba
def test_the_kernel_and_the_numpy_path_agree():
    photo = photo_like(301, 203, seed=4)
    small = cv2.resize(photo, (150, 101), interpolation=cv2.INTER_AREA)
    cartoon = cv2.bilateralFilter(small, 9, 60, 5)
    for sigma in (4, 24, 200):
        fast = joint_bilateral_upsample(cartoon, small, photo, sigma).astype(int)
        with cpu_kernels.disabled():
            slow = joint_bilateral_upsample(cartoon, small, photo, sigma).astype(int)
        assert np.abs(fast - slow).max() <= 1 and (fast != slow).mean() < 0.01


@pytest.mark.parametrize(
    "arguments, match",
    [
        ((np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), 24),
         "`image`"),
        ((np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), 24),
         "guide_low"),
        ((np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((16, 16), np.uint8), 24), "`guide`"),
        ((np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), 0.0),
         "sigma"),
        ((np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), True),
         "sigma"),
        ((np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((16, 16, 3), np.uint8),
          float("nan")), "sigma"),
        ((np.zeros((0, 8, 3), np.uint8), np.zeros((0, 8, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), 24), "empty"),
        ((np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((16, 0, 3), np.uint8), 24), "empty"),
    ],
)  # fmt: skip
def test_bad_inputs_are_refused(arguments, match):
    with pytest.raises(ValueError, match=match):
        joint_bilateral_upsample(*arguments)


def test_a_numpy_scalar_sigma_is_a_sigma():
    image, guide = np.zeros((8, 8, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)
    for sigma in (np.float32(3.5), np.int64(24)):
        assert joint_bilateral_upsample(image, image, guide, sigma).shape == (16, 16, 3)


@pytest.mark.parametrize("setting", [{"toon": 0}, {"toon": 300}, {"toon": "24"}, {"toon": True}, {"anime": 24}, [24]])
def test_a_hostile_joint_upsampling_config_is_refused(tmp_path, setting):
    with pytest.raises(ValueError, match="joint_upsampling"):
        GuidedFilterGenerator(styles=["ghibli", "toon"], joint_upsampling=setting)
    path = save_tiny_style_model(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "joint_upsampling": setting}))
    with pytest.raises(ValueError, match="joint_upsampling"):
        Cartoonizer.from_pretrained(path, device="cpu")


@pytest.fixture(scope="module")
def upsampling_pipe(tmp_path_factory):
    path = save_tiny_style_model(
        tmp_path_factory.mktemp("upsampling") / "ckpt",
        work_sides={"toon": 320, "ghibli": 320},
        joint_upsampling={"toon": 16},
        contour_lines={"painterly": ContourLines().to_dict()},
    )
    pipe = Cartoonizer.from_pretrained(path, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_pipeline_upsamples_a_style_edge_aware_from_its_work_side(upsampling_pipe):
    """`joint_upsampling`: a 640-px photo drawn at 320 px in `toon` is brought to 640 px by joint bilateral upsampling
    guided by the photo (the drawing at 320 px, upsampled so, exactly); `ghibli`, which the model does not name, is
    bilinear unless asked (``joint_upsampling=True``: the default σ), and ``False`` makes `toon` bilinear too."""
    pipe = upsampling_pipe
    assert pipe.joint_upsampling == {"toon": 16.0}
    assert pipe.upsampling_sigma("toon") == 16.0 and pipe.upsampling_sigma("ghibli") is None
    assert pipe.upsampling_sigma("ghibli", True) == DEFAULT_UPSAMPLING_SIGMA
    assert pipe.upsampling_sigma("toon", False) is None
    photo = photo_like(640, 480, seed=1)
    small = np.asarray(resize_to_max_side(Image.fromarray(photo), 320))
    guide_low = cv2.resize(photo, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    for style, asked, sigma in (("toon", None, 16.0), ("toon", False, None), ("ghibli", None, None),
                                ("ghibli", True, DEFAULT_UPSAMPLING_SIGMA)):  # fmt: skip
        drawn = np.asarray(pipe(small, style=style)[0])  # 320 px: drawn at its own size
        got = np.asarray(pipe(photo, style=style, joint_upsampling=asked)[0])
        if sigma is None:
            expected = cv2.resize(drawn, (640, 480), interpolation=cv2.INTER_LINEAR)
        else:
            expected = joint_bilateral_upsample(drawn, guide_low, photo, sigma)
        assert np.array_equal(got, expected), (style, asked)
    with pytest.raises(ValueError, match="`joint_upsampling` must be None"):
        pipe(photo, style="toon", joint_upsampling="yes")


def test_with_contour_lines_the_upsampling_is_guided_by_the_line_stages_smoothed_photo(upsampling_pipe):
    """Where the style's line stage smooths the photo at the cartoon's size (the toon teacher's smoothing), the
    upsampling is guided by that smoothed photo, and the lines are drawn on the upsampled cartoon."""
    pipe, lines = upsampling_pipe, ContourLines()
    photo = photo_like(640, 480, seed=1)
    photo[100:300, 80:330] = (230, 210, 60)  # a flat shape with clean borders: lines at this size
    small = np.asarray(resize_to_max_side(Image.fromarray(photo), 320))
    smoothed = line_surface(photo, lines)
    guide_low = cv2.resize(smoothed, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    drawn = np.asarray(pipe(small, style="painterly", contour_lines=False)[0])  # painterly: no work side, lines
    got = np.asarray(pipe(photo, style="painterly", work_side=320, joint_upsampling=True)[0])
    upsampled = joint_bilateral_upsample(drawn, guide_low, smoothed, DEFAULT_UPSAMPLING_SIGMA)
    mask = draw_contour_lines(photo, lines)
    assert (mask > 0.2).mean() > 0.002
    assert np.array_equal(got, apply_ink(upsampled, mask, lines.line_strength))
