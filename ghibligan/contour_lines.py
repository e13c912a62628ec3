"""Contour lines at a photo's own size: the toon teacher's ink, drawn by the pipeline with the teacher's algorithm.

The toon teacher (`ghibligan.teachers.toon`) inks the edges of its smoothed photo: the luminance of the smoothed photo
is smoothed once more (a guided filter and a Gaussian), its Sobel magnitude thresholded into a band along each edge,
the band thinned to one pixel (Zhang & Suen 1984), the thinned pixels dropped where they are dense (texture: hair,
foliage) and the pieces shorter than a minimum removed; the lines are then widened, anti-aliased and blended in as
near-black ink. Its window and lengths are scaled with the photo but a thinned line is always one pixel wide, so the
teacher inks a 1024-px photo (1.1 % of its pixels) and leaves a 512-px one nearly bare (0.03 %): on the 8 held-out
photos at 1024 px the lines hold 38 % of the error of a model that draws the toon look at 512 px and upsamples it,
and no model that draws at 512 px can place a one-pixel line at 1024. So the pipeline draws the lines itself, after the
upsampling, at the photo's size (`Cartoonizer`, from a model's ``contour_lines``), with the teacher's own algorithm:
`smooth_surface` and `line_mask` are the teacher's stages, and the teacher calls them.

The slow steps are reimplemented for speed (compiled by numba on first use, ~13 s on 2 cores, then cached on disk;
without numba OpenCV's run). The thinning is bit-parallel
(64 pixels a machine word, every Zhang-Suen condition a Boolean formula, rows whose neighbourhood has settled
skipped) and gives ``cv2.ximgproc.thinning``'s skeleton bit for bit, so the teacher runs it too. The guided filters
are fused kernels of OpenCV's arithmetic (with alpha = 1 - eps Σ⁻¹, exact sums), within one grey level of OpenCV's in
~1e-5 of the pixels at the teacher's settings: the pipeline runs them (``fast=True``), the teacher OpenCV's
(``fast=False``), so its pairs do not change (tests/test_contour_lines.py). (On a grey photo at a small eps the colour
covariance is near singular and OpenCV's float32 arithmetic drifts from a float64 reference by several levels; these
kernels do not: there the pipeline's lines can differ from the teacher's.) ``GHIBLIGAN_CPU_KERNELS=0`` turns them
off, as it does the model's kernels.

    >>> lines = ContourLines()                    # the toon teacher's settings
    >>> mask = draw_contour_lines(rgb, lines)     # (H, W) float32 in [0, 1]
    >>> inked = apply_ink(cartoon, mask, lines.line_strength)
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from .image_io import check_uint8_rgb

try:
    import numba
    from numba import njit, prange
except ImportError:  # OpenCV's implementations serve
    numba = None

INK_LEVEL = 0.08  # the ink's grey (0-1): near-black, blended by the line mask times the strength
# The pipeline finds the lines of a larger photo on a copy of this long side and upsamples the mask: the teacher's
# bilateral window grows with the photo (27 px at 3840), which made 4K lines cost 2.8 s.
MAX_LINE_SIDE = 2048


@dataclass(frozen=True)
class ContourLines:
    """The toon teacher's line settings (`ghibligan.teachers.toon.ToonConfig`'s fields of the same names). Pixel
    sizes are for a 1024-px photo and scaled with it. A model's config.json carries them (``contour_lines``): read them
    with `from_dict`, which checks them as untrusted input."""

    smooth_radius: int = 8  # the photo's guided filter (radius; 0: none)
    smooth_eps: float = 0.04  # its regularization, in (0-1 intensity)²
    bilateral_passes: int = 2  # bilateral passes after it
    line_threshold: float = 0.06  # Sobel magnitude (0-1) of the smoothed luminance that starts a line
    line_min_length: int = 40  # connected line pixels below this are dropped
    texture_density: float = 0.1  # line pixels where more than this share of a 24-px window is line: texture
    line_width: int = 2
    line_strength: float = 0.85  # the ink's opacity

    @classmethod
    def from_dict(cls, settings) -> ContourLines:
        """From an untrusted mapping (a config.json's): unknown keys, wrong types and values out of these bounds are
        a `ValueError`. (Built directly, e.g. from a teacher's config, the values are taken as they are.)"""
        names = {field.name for field in fields(cls)}
        if not isinstance(settings, dict) or not set(settings) <= names:
            raise ValueError(f"ContourLines: expected a mapping of some of {sorted(names)}, got {str(settings)[:200]}.")
        lines = cls(**settings)
        for name, low, high in (("smooth_radius", 0, 64), ("bilateral_passes", 0, 8), ("line_min_length", 1, 10_000),
                                ("line_width", 1, 16)):  # fmt: skip
            value = getattr(lines, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"ContourLines: `{name}` must be an integer in [{low}, {high}], got {value!r}.")
        for name, low, high in (("smooth_eps", 0.0, 1.0), ("line_threshold", 1e-6, 4.0), ("texture_density", 1e-6, 1.0),
                                ("line_strength", 1e-6, 1.0)):  # fmt: skip
            value = getattr(lines, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"ContourLines: `{name}` must be a number in [{low:g}, {high:g}], got {value!r}.")
        return lines

    def to_dict(self) -> dict:
        return asdict(self)


def scaled_size(value: int, image: np.ndarray) -> int:
    """A pixel size given for a 1024-px image, scaled to ``image``'s long side (at least 1)."""
    return max(1, round(value * max(image.shape[:2]) / 1024))


def smooth_surface(rgb: np.ndarray, radius: int, eps: float, bilateral_passes: int, fast: bool = False) -> np.ndarray:
    """The toon teacher's edge-preserving smoothing of a uint8 RGB photo: a guided filter of the photo by itself
    (``radius`` at 1024 px, ``eps`` in (0-1)²) and ``bilateral_passes`` bilateral passes → uint8 RGB."""
    smoothed = rgb
    if radius > 0:
        smoothed = _guided_filter(rgb, scaled_size(radius, rgb), (eps * 255) ** 2, fast)
    for _ in range(bilateral_passes):
        smoothed = cv2.bilateralFilter(smoothed, scaled_size(7, rgb) | 1, 30, scaled_size(5, rgb))
    return smoothed


def line_mask(smoothed: np.ndarray, lines: ContourLines, fast: bool = False) -> np.ndarray:
    """The ink of a smoothed uint8 RGB photo (`smooth_surface`), (H, W) float32 in [0, 1]: edges of its luminance,
    thinned, without the dense ones (texture) and the short ones, widened and anti-aliased."""
    gray = cv2.cvtColor(smoothed, cv2.COLOR_RGB2GRAY)
    gray = _guided_filter(gray, scaled_size(8, smoothed), (0.08 * 255) ** 2, fast).astype(np.float32) / 255
    gray = cv2.GaussianBlur(gray, (0, 0), sigmaX=max(1.0, scaled_size(1, smoothed)))
    magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    edges = thin((magnitude > lines.line_threshold).astype(np.uint8))  # exact either way: the fast one, always
    window = scaled_size(24, smoothed) | 1
    density = cv2.blur(edges.astype(np.float32), (window, window))  # a lone line: ~1/window; texture: more
    edges[density > lines.texture_density] = 0
    _, labels, stats, _ = cv2.connectedComponentsWithStats(edges, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= scaled_size(lines.line_min_length, smoothed)
    keep[0] = False
    mask = keep[labels].astype(np.uint8)
    width = scaled_size(lines.line_width, smoothed)
    if width > 1:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width)))
    return cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0)  # anti-aliased


def line_surface(rgb: np.ndarray, lines: ContourLines, fast: bool = True, max_side: int | None = MAX_LINE_SIDE):
    """The photo smoothed as the toon teacher smooths it before it finds its lines (`smooth_surface`), uint8 RGB at
    the size the lines are found at: the photo's, or a copy of long side ``max_side`` for a larger one (None: any
    size, as the teacher). The pipeline also guides its upsampling by it (`ghibligan.upsampling`)."""
    check_uint8_rgb(rgb)
    height, width = rgb.shape[:2]
    small = rgb
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return smooth_surface(small, lines.smooth_radius, lines.smooth_eps, lines.bilateral_passes, fast)


def draw_contour_lines(
    rgb: np.ndarray,
    lines: ContourLines,
    fast: bool = True,
    max_side: int | None = MAX_LINE_SIDE,
    smoothed: np.ndarray | None = None,
) -> np.ndarray:
    """The toon teacher's ink for a uint8 RGB photo (H, W, 3), at its size: (H, W) float32 in [0, 1]. A photo whose
    long side is over ``max_side`` has its lines found on a copy of that side (area-downscaled; every size in the
    stage scales with it) and the mask upsampled (None: at any size, as the teacher). ``smoothed``: the photo's
    `line_surface`, where the caller has it already."""
    check_uint8_rgb(rgb)
    height, width = rgb.shape[:2]
    if smoothed is None:
        smoothed = line_surface(rgb, lines, fast, max_side)
    mask = line_mask(smoothed, lines, fast)
    return mask if mask.shape == (height, width) else cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)


def apply_ink(image: np.ndarray, mask: np.ndarray, strength: float) -> np.ndarray:
    """``image`` (uint8 RGB, or float RGB in [0, 1]) with near-black ink blended in by ``mask`` × ``strength``; the
    same dtype out (float: float32). A uint8 image is blended only where there is ink (a few percent of a photo)."""
    if image.ndim != 3 or image.shape[2] != 3 or np.shape(mask) != image.shape[:2]:
        raise ValueError(f"apply_ink: an (H, W, 3) image and an (H, W) mask, got {image.shape} and {np.shape(mask)}.")
    ink = mask.astype(np.float32, copy=False) * np.float32(strength)
    if image.dtype != np.uint8:
        ink = ink[..., None]
        return (image * (1 - ink) + INK_LEVEL * ink).astype(np.float32)
    if _kernels_enabled() and image.flags.c_contiguous:
        return _ink_kernel(image, np.ascontiguousarray(ink))
    inked = ink > 0
    weight = ink[inked][:, None]
    pixels = image[inked].astype(np.float32) / 255 * (1 - weight) + INK_LEVEL * weight
    out = image.copy()
    out[inked] = (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out


def thin(binary: np.ndarray, fast: bool = True) -> np.ndarray:
    """Zhang-Suen thinning of a 0/1 (or 0/nonzero) uint8 image, as ``cv2.ximgproc.thinning`` (the image's border
    pixels are never removed) → uint8 0/1."""
    if not fast or not _kernels_enabled() or sys.byteorder != "little" or min(binary.shape) < 3:
        return cv2.ximgproc.thinning((binary != 0).astype(np.uint8) * 255) // 255
    height, width = binary.shape
    words = -(-width // 64)
    packed = np.zeros((height, words * 8), np.uint8)
    packed[:, : -(-width // 8)] = np.packbits(binary != 0, axis=1, bitorder="little")
    interior = np.zeros(words * 64, bool)
    interior[1 : width - 1] = True
    interior = np.packbits(interior, bitorder="little").view(np.uint64)  # the columns a pixel may be removed in
    from .models.cpu_kernels import run_kernel  # (here: the models import this module) one kernel call at a time

    thinned = run_kernel(_thin_kernel, np.ascontiguousarray(packed.view(np.uint64)), interior)
    return np.unpackbits(thinned.view(np.uint8), axis=1, count=width, bitorder="little")


def _kernels_enabled() -> bool:
    """numba installed and the CPU kernels not turned off (``GHIBLIGAN_CPU_KERNELS=0``, `cpu_kernels.disabled`)."""
    if numba is None:
        return False
    from .models import cpu_kernels  # (here: the models import this module)

    return cpu_kernels.enabled()


def _guided_filter(image: np.ndarray, radius: int, eps: float, fast: bool) -> np.ndarray:
    """``cv2.ximgproc.guidedFilter(image, image, radius, eps)`` of a uint8 gray or RGB image (``eps`` in (0-255)²)."""
    # (eps under one grey level squared: a near-singular covariance, where the kernel's 1 - eps Σ⁻¹ loses precision)
    if not fast or not _kernels_enabled() or eps < 1 or min(image.shape[:2]) <= 2 * radius + 1:
        return cv2.ximgproc.guidedFilter(image, image, radius, eps)
    from .models.cpu_kernels import run_kernel

    pixels = np.ascontiguousarray(image.reshape(*image.shape[:2], -1), dtype=np.float32)  # (H, W, C)
    blocks = min(image.shape[0], 32)  # blocks of rows, shared by the threads: each starts its window sums anew
    models = run_kernel(_guided_models, pixels, radius, np.float32(eps), blocks)
    out = run_kernel(_guided_apply, pixels, models, radius, blocks)
    return out[..., 0] if image.ndim == 2 else out


if numba is not None:

    @njit(inline="always", cache=True)
    def _reflect(i, n):
        """OpenCV's BORDER_REFLECT index (fedcba|abcdef|fedcba) for -n <= i < 2n."""
        return -i - 1 if i < 0 else (2 * n - i - 1 if i >= n else i)

    @njit(inline="always", cache=True)
    def _to_uint8(value):
        """Rounded half to even and saturated, as OpenCV's ``saturate_cast<uchar>``."""
        return np.uint8(min(max(np.rint(value), np.float32(0.0)), np.float32(255.0)))

    @njit(inline="always", cache=True)
    def _add_models(enter, leave, columns):
        """Column sums (W, planes) += the row ``enter`` (W, planes) float32, minus the row ``leave`` if given."""
        width, planes = enter.shape
        for x in range(width):
            for p in range(planes):
                columns[x, p] += enter[x, p] if leave is None else enter[x, p] - leave[x, p]

    @njit(inline="always", cache=True)
    def _add_rows(pixels, y, sign, columns, offset):
        """Add (sign 1) or subtract (-1) row ``y``'s channels and their products (C = 1: I, I²; C = 3: r, g, b, rr,
        gg, bb, rg, rb, gb, each a float32 as OpenCV forms it) to the column sums, held from ``offset`` on."""
        width, channels = pixels.shape[1], pixels.shape[2]
        for x in range(width):
            if channels == 1:
                v = pixels[y, x, 0]
                columns[offset + x, 0] += sign * v
                columns[offset + x, 1] += sign * (v * v)
            else:
                r, g, b = pixels[y, x, 0], pixels[y, x, 1], pixels[y, x, 2]
                columns[offset + x, 0] += sign * r
                columns[offset + x, 1] += sign * g
                columns[offset + x, 2] += sign * b
                columns[offset + x, 3] += sign * (r * r)
                columns[offset + x, 4] += sign * (g * g)
                columns[offset + x, 5] += sign * (b * b)
                columns[offset + x, 6] += sign * (r * g)
                columns[offset + x, 7] += sign * (r * b)
                columns[offset + x, 8] += sign * (g * b)

    @njit(inline="always", cache=True)
    def _window_rows(columns, radius, row):
        """``row`` (W, planes): the horizontal window sums of the column sums, float64, reflected at the borders.
        ``columns`` (W + 2r + 1, planes) holds them from index r + 1 on; its margins are filled here. The planes'
        running sums go side by side (independent additions in flight)."""
        width, planes = row.shape
        for i in range(radius + 1):  # the margins: columns of x = -r-1 .. -1 and W .. W + r - 1, reflected
            columns[i] = columns[radius + 1 + _reflect(i - radius - 1, width)]
        for j in range(width, width + radius):
            columns[radius + 1 + j] = columns[radius + 1 + _reflect(j, width)]
        total = row[0]
        total[:] = 0.0
        for dx in range(2 * radius + 1):
            source = columns[dx + 1]
            for p in range(planes):
                total[p] += source[p]
        for x in range(1, width):
            enter, leave, previous, out = columns[x + 2 * radius + 1], columns[x], row[x - 1], row[x]
            for p in range(planes):
                out[p] = previous[p] + (enter[p] - leave[p])

    @njit(parallel=True, cache=True)
    def _guided_models(pixels, radius, eps, blocks):
        """The guided filter of (H, W, C) float32 pixels by themselves (C = 1 or 3), first half: each window's
        coefficients. With p = I, alpha = Σ⁻¹ cov(I) = 1 - eps Σ⁻¹ (Σ = cov(I) + eps·1) is symmetric and beta =
        mean(I) - alpha·mean(I) = eps Σ⁻¹ mean(I). → (H, W, planes) float32: C = 1: a, b; C = 3: alpha's six
        entries (00, 01, 02, 11, 12, 22), then beta's three. Box sums of the channels and their products run down the
        rows of ``blocks`` blocks of rows, in float64 (exact, as OpenCV's box filter)."""
        height, width, channels = pixels.shape
        sums = 2 if channels == 1 else 9
        models = np.empty((height, width, 2 if channels == 1 else 9), np.float32)
        area = 1.0 / ((2 * radius + 1) * (2 * radius + 1))
        for block in prange(blocks):
            y0, y1 = block * height // blocks, (block + 1) * height // blocks
            columns = np.zeros((width + 2 * radius + 1, sums), np.float64)
            for dy in range(-radius, radius + 1):
                _add_rows(pixels, _reflect(y0 + dy, height), 1.0, columns, radius + 1)
            row = np.empty((width, sums), np.float64)
            for y in range(y0, y1):
                _window_rows(columns, radius, row)
                for x in range(width):
                    if channels == 1:
                        m = np.float32(row[x, 0] * area)
                        variance = np.float32(row[x, 1] * area) - m * m
                        weight = eps / (variance + eps)
                        models[y, x, 0] = np.float32(1.0) - weight
                        models[y, x, 1] = weight * m
                        continue
                    m0, m1 = np.float32(row[x, 0] * area), np.float32(row[x, 1] * area)
                    m2 = np.float32(row[x, 2] * area)
                    a00 = np.float32(row[x, 3] * area) - m0 * m0 + eps
                    a11 = np.float32(row[x, 4] * area) - m1 * m1 + eps
                    a22 = np.float32(row[x, 5] * area) - m2 * m2 + eps
                    a01 = np.float32(row[x, 6] * area) - m0 * m1
                    a02 = np.float32(row[x, 7] * area) - m0 * m2
                    a12 = np.float32(row[x, 8] * area) - m1 * m2
                    i00, i01, i02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11
                    i11, i12, i22 = a00 * a22 - a02 * a02, a01 * a02 - a00 * a12, a00 * a11 - a01 * a01
                    scale = eps / (a00 * i00 + a01 * i01 + a02 * i02)  # eps / det: eps Σ⁻¹ = scale · adjugate
                    i00, i01, i02 = i00 * scale, i01 * scale, i02 * scale
                    i11, i12, i22 = i11 * scale, i12 * scale, i22 * scale
                    models[y, x, 0] = np.float32(1.0) - i00
                    models[y, x, 1] = -i01
                    models[y, x, 2] = -i02
                    models[y, x, 3] = np.float32(1.0) - i11
                    models[y, x, 4] = -i12
                    models[y, x, 5] = np.float32(1.0) - i22
                    models[y, x, 6] = i00 * m0 + i01 * m1 + i02 * m2
                    models[y, x, 7] = i01 * m0 + i11 * m1 + i12 * m2
                    models[y, x, 8] = i02 * m0 + i12 * m1 + i22 * m2
                if y + 1 < y1:  # the window moves down a row
                    _add_rows(pixels, _reflect(y + radius + 1, height), 1.0, columns, radius + 1)
                    _add_rows(pixels, _reflect(y - radius, height), -1.0, columns, radius + 1)
        return models

    @njit(parallel=True, cache=True)
    def _guided_apply(pixels, models, radius, blocks):
        """Second half: each pixel's coefficients averaged over the windows that hold it, applied to it → (H, W, C)
        uint8, rounded and saturated as OpenCV converts."""
        height, width, channels = pixels.shape
        planes = models.shape[2]
        out = np.empty((height, width, channels), np.uint8)
        area = 1.0 / ((2 * radius + 1) * (2 * radius + 1))
        for block in prange(blocks):
            y0, y1 = block * height // blocks, (block + 1) * height // blocks
            columns = np.zeros((width + 2 * radius + 1, planes), np.float64)
            for dy in range(-radius, radius + 1):
                _add_models(models[_reflect(y0 + dy, height)], None, columns[radius + 1 : radius + 1 + width])
            row = np.empty((width, planes), np.float64)
            for y in range(y0, y1):
                _window_rows(columns, radius, row)
                for x in range(width):
                    if channels == 1:
                        value = np.float32(row[x, 0] * area) * pixels[y, x, 0] + np.float32(row[x, 1] * area)
                        out[y, x, 0] = _to_uint8(value)
                        continue
                    r, g, b = pixels[y, x, 0], pixels[y, x, 1], pixels[y, x, 2]
                    e00, e01 = np.float32(row[x, 0] * area), np.float32(row[x, 1] * area)
                    e02, e11 = np.float32(row[x, 2] * area), np.float32(row[x, 3] * area)
                    e12, e22 = np.float32(row[x, 4] * area), np.float32(row[x, 5] * area)
                    out[y, x, 0] = _to_uint8(e00 * r + e01 * g + e02 * b + np.float32(row[x, 6] * area))
                    out[y, x, 1] = _to_uint8(e01 * r + e11 * g + e12 * b + np.float32(row[x, 7] * area))
                    out[y, x, 2] = _to_uint8(e02 * r + e12 * g + e22 * b + np.float32(row[x, 8] * area))
                if y + 1 < y1:
                    enter, leave = models[_reflect(y + radius + 1, height)], models[_reflect(y - radius, height)]
                    _add_models(enter, leave, columns[radius + 1 : radius + 1 + width])
        return out

    @njit(parallel=True, cache=True)
    def _ink_kernel(image, ink):
        """`apply_ink` of a uint8 image: the same float32 arithmetic, only where there is ink."""
        height, width = ink.shape
        out = image.copy()
        level, scale = np.float32(INK_LEVEL), np.float32(255.0)
        for y in prange(height):
            for x in range(width):
                weight = ink[y, x]
                if weight > 0:
                    for c in range(3):
                        value = np.float32(image[y, x, c]) / scale * (np.float32(1.0) - weight) + level * weight
                        out[y, x, c] = np.uint8(
                            min(max(value, np.float32(0.0)), np.float32(1.0)) * scale + np.float32(0.5)
                        )
        return out

    @njit(inline="always", cache=True)
    def _west(row, k):
        """Each pixel's left neighbour, for the 64 pixels of word ``k`` (bit b: pixel 64k + b)."""
        carry = row[k - 1] >> np.uint64(63) if k > 0 else np.uint64(0)
        return (row[k] << np.uint64(1)) | carry

    @njit(inline="always", cache=True)
    def _east(row, k):
        carry = row[k + 1] << np.uint64(63) if k + 1 < row.shape[0] else np.uint64(0)
        return (row[k] >> np.uint64(1)) | carry

    @njit(inline="always", cache=True)
    def _removable(up, row, down, k, second):
        """The pixels of word ``k`` a Zhang-Suen sub-iteration removes: 2 ≤ B ≤ 6 neighbours, exactly one 0→1
        transition around the ring (A = 1), and the sub-iteration's two products of neighbours zero."""
        ring = (up[k], _east(up, k), _east(row, k), _east(down, k), down[k], _west(down, k), _west(row, k),
                _west(up, k))  # fmt: skip  # N, NE, E, SE, S, SW, W, NW
        c0 = c1 = c2 = c3 = np.uint64(0)  # B, bit-sliced: a ripple-carry count of the eight neighbours
        for bit in ring:
            carry = bit
            t = c0 & carry
            c0 ^= carry
            carry = t
            t = c1 & carry
            c1 ^= carry
            carry = t
            t = c2 & carry
            c2 ^= carry
            c3 ^= t
        b_ok = (c1 | c2 | c3) & ~c3 & ~(c2 & c1 & c0)  # 2 ≤ B ≤ 6 (not 7 = 0111, not 8 = 1000)
        one = two = np.uint64(0)
        for i in range(8):
            transition = ~ring[i] & ring[(i + 1) % 8]
            two |= one & transition
            one |= transition
        north, east, south, west = ring[0], ring[2], ring[4], ring[6]
        if second:
            products = ~(north & east & west) & ~(north & south & west)
        else:
            products = ~(north & east & south) & ~(east & south & west)
        return row[k] & b_ok & one & ~two & products

    @njit(parallel=True, cache=True)
    def _thin_kernel(packed, interior):
        """Zhang-Suen to convergence on bit-packed rows (H, words) uint64; the first and last rows, and the columns
        outside ``interior``, stay. A row is evaluated again only while its neighbourhood keeps changing: one left
        alone by both sub-iterations since its or a neighbour row's last change cannot change any more."""
        height, words = packed.shape
        current, following = packed.copy(), packed.copy()
        quiet = np.zeros(height, np.int64)  # sub-iterations a row has gone without a change around it
        changed = np.zeros(height, np.uint8)
        sub = 0
        while True:
            second = sub % 2 == 1
            for y in prange(1, height - 1):
                changed[y] = 0
                if quiet[y] >= 2:
                    continue
                up, row, down, out = current[y - 1], current[y], current[y + 1], following[y]
                for k in range(words):
                    removed = _removable(up, row, down, k, second) & interior[k]
                    out[k] = row[k] & ~removed
                    if removed:
                        changed[y] = 1
            for y in range(1, height - 1):
                if changed[y]:
                    for k in range(words):
                        current[y, k] = following[y, k]
            settled = True
            for y in range(1, height - 1):
                quiet[y] = 0 if changed[y - 1] or changed[y] or changed[y + 1] else quiet[y] + 1
                settled = settled and quiet[y] >= 2
            sub += 1
            # two sub-iterations in a row without a change anywhere: the image is what it was before the last of
            # them, so the next would not change it either (where OpenCV stops, after a whole iteration without one)
            if settled:
                break
        return current


__all__ = [
    "INK_LEVEL",
    "ContourLines",
    "apply_ink",
    "draw_contour_lines",
    "line_mask",
    "scaled_size",
    "smooth_surface",
    "thin",
]
