"""Edge-aware upsampling of a cartoon drawn at a smaller size: joint bilateral upsampling guided by the photo.

A model draws some styles at a work side (512 px) and the pipeline brings the cartoon to the photo's size. Bilinear
upsampling turns every border into a ramp two or more pixels wide: at 100 % a 1024-px `toon` looks like a 512-px image
enlarged, its flat levels a little blurred, where its teacher, which draws at the photo's own size, has crisp ones
(flat share 0.86x the teacher's at 1024 px with bilinear upsampling). Joint bilateral upsampling (Kopf et al.,
SIGGRAPH 2007; the same operation the model's own output stage runs at x2, `models.guided.JointBilateralUpsampler`)
takes for each full-size pixel the bilinear mix of the four drawn pixels around it, each weighted by how close the
guide there (the photo as the model saw it) is to the guide at the pixel: a pixel on one side of an edge of the photo
takes the cartoon's colour of that side, so the cartoon's borders come out as sharp as the photo's edges, and where
the four look alike it is the bilinear mix. Every output is a convex mix of drawn colours: a flat region stays flat.

The kernel is compiled by numba on first use (cached on disk) and runs both cores; without numba, or with
``GHIBLIGAN_CPU_KERNELS=0``, the same arithmetic runs in numpy, a band of rows at a time.

    >>> crisp = joint_bilateral_upsample(cartoon_512, photo_512, photo_1024, sigma=24)
"""

from __future__ import annotations

import numbers

import numpy as np

from .image_io import check_uint8_rgb

try:
    from numba import njit, prange
except ImportError:  # numpy serves
    njit = None

MIN_SIGMA, MAX_SIGMA = 1.0, 255.0  # bounds of a range σ, in grey levels (a config's, which may not be trusted)
# σ for a style a model does not name (`Cartoonizer(joint_upsampling=True)`): the bundled model's `toon`. On the 8
# held-out photos at 1024 px, guided by the photo smoothed as the toon teacher smooths it: σ 16 / 24 / 32 gave 85.1 /
# 85.6 / 85.9 % of the error removed and 0.91 / 0.90 / 0.89x the teacher's flat share (bilinear 85.6 %, 0.86x)
DEFAULT_UPSAMPLING_SIGMA = 24.0
_FLOOR = 1e-6  # a pixel unlike all four drawn pixels around it still gets their bilinear mix
_NUMPY_ROWS = 256  # rows per band of the numpy path (4 taps × 3 channels of float32 each)


def is_sigma(value) -> bool:
    """A range σ a config may hold: a real number (not a bool) in [`MIN_SIGMA`, `MAX_SIGMA`] grey levels."""
    real = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    return real and MIN_SIGMA <= value <= MAX_SIGMA


def joint_bilateral_upsample(image: np.ndarray, guide_low: np.ndarray, guide: np.ndarray, sigma: float) -> np.ndarray:
    """Upsample ``image`` (h, w, 3) uint8, drawn from ``guide_low`` (h, w, 3) uint8, to the size of ``guide``
    (H, W, 3) uint8, the same picture at full size: each pixel the mix of the 2×2 drawn pixels around it by their
    bilinear weights times ``exp(-|guide - guide_low|² / 2σ²)``, ``sigma`` in grey levels (RGB distance) → (H, W, 3)
    uint8. A large ``sigma`` gives the bilinear resize; a small one follows every edge of the guide, texture too."""
    for name, array in (("image", image), ("guide_low", guide_low), ("guide", guide)):
        check_uint8_rgb(array, name)
    if min(image.shape[:2]) == 0 or min(guide.shape[:2]) == 0:
        raise ValueError(f"`image` and `guide` must not be empty, got shapes {image.shape} and {guide.shape}.")
    if guide_low.shape != image.shape:
        raise ValueError(f"`guide_low` must have `image`'s shape {image.shape}, got {guide_low.shape}.")
    if not is_sigma(sigma):
        raise ValueError(f"`sigma` must be a number in [{MIN_SIGMA:g}, {MAX_SIGMA:g}] grey levels, got {sigma!r}.")
    from .models.cpu_kernels import resize_taps, run_kernel  # (here: the models import this module)

    (height, width), (low_height, low_width) = guide.shape[:2], image.shape[:2]
    rows, row_weights = resize_taps(low_height, height)  # OpenCV's INTER_LINEAR taps, as the model's upsampling
    columns, column_weights = resize_taps(low_width, width)
    scale = np.float32(0.5 / float(sigma) ** 2)
    if _kernels_enabled():
        arrays = [np.ascontiguousarray(a) for a in (image, guide_low, guide)]
        return run_kernel(_upsample_kernel, *arrays, rows, row_weights, columns, column_weights, scale)
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, _NUMPY_ROWS):
        band = slice(top, min(top + _NUMPY_ROWS, height))
        out[band] = _upsample_rows(image, guide_low, guide[band], rows[band], row_weights[band], columns,
                                   column_weights, scale)  # fmt: skip
    return out


def _upsample_rows(image, guide_low, guide, rows, row_weights, columns, column_weights, scale) -> np.ndarray:
    """The numpy path of `joint_bilateral_upsample` for a band of output rows."""
    pixels = guide.astype(np.float32)  # (b, W, 3)
    numerator, denominator = np.zeros(pixels.shape, np.float32), np.zeros(pixels.shape[:2], np.float32)
    for i in range(2):
        for j in range(2):
            index = (rows[:, i, None], columns[None, :, j])
            distance = np.square(pixels - guide_low[index].astype(np.float32)).sum(-1)  # (b, W)
            bilinear = row_weights[:, i, None] * column_weights[None, :, j]
            weight = bilinear * (np.exp(-distance * scale) + np.float32(_FLOOR))
            numerator += weight[..., None] * image[index]
            denominator += weight
    return np.clip(numerator / denominator[..., None] + 0.5, 0, 255).astype(np.uint8)


def _kernels_enabled() -> bool:
    """numba installed and the CPU kernels not turned off (``GHIBLIGAN_CPU_KERNELS=0``, `cpu_kernels.disabled`)."""
    if njit is None:
        return False
    from .models import cpu_kernels  # (here: the models import this package's modules)

    return cpu_kernels.enabled()


if njit is not None:
    from .models.cpu_kernels import _exp_neg

    @njit(parallel=True, fastmath=True, cache=True)
    def _upsample_kernel(image, guide_low, guide, rows, row_weights, columns, column_weights, scale):
        """`joint_bilateral_upsample`, a row per iteration on every core. The four taps' pixels of a row are first
        gathered into contiguous planes (two drawn rows, two columns each), so the arithmetic loop over the row
        vectorizes; ``exp`` is `cpu_kernels._exp_neg` (relative error below 2e-5). Within a grey level of the numpy
        path."""
        height, width = guide.shape[:2]
        out = np.empty((height, width, 3), np.uint8)
        floor, half, top = np.float32(_FLOOR), np.float32(0.5), np.float32(255.0)
        for y in prange(height):
            taps = np.empty((4, 6, width), np.float32)  # tap (row i, column j) → image RGB, guide_low RGB
            weights = np.empty((4, width), np.float32)
            for i in range(2):
                r, wy = rows[y, i], row_weights[y, i]
                for j in range(2):
                    tap, weight = taps[2 * i + j], weights[2 * i + j]
                    for x in range(width):
                        c = columns[x, j]
                        for k in range(3):
                            tap[k, x] = image[r, c, k]
                            tap[3 + k, x] = guide_low[r, c, k]
                        weight[x] = wy * column_weights[x, j]
            pixels = np.empty((3, width), np.float32)
            for x in range(width):
                for k in range(3):
                    pixels[k, x] = guide[y, x, k]
            n0, n1, n2, total = (np.zeros(width, np.float32), np.zeros(width, np.float32),
                                 np.zeros(width, np.float32), np.zeros(width, np.float32))  # fmt: skip
            for t in range(4):
                tap, weight = taps[t], weights[t]
                for x in range(width):
                    d0 = pixels[0, x] - tap[3, x]
                    d1 = pixels[1, x] - tap[4, x]
                    d2 = pixels[2, x] - tap[5, x]
                    w = weight[x] * (_exp_neg((d0 * d0 + d1 * d1 + d2 * d2) * scale) + floor)
                    n0[x] += w * tap[0, x]
                    n1[x] += w * tap[1, x]
                    n2[x] += w * tap[2, x]
                    total[x] += w
            for x in range(width):
                inverse = np.float32(1.0) / total[x]
                out[y, x, 0] = np.uint8(min(n0[x] * inverse + half, top))
                out[y, x, 1] = np.uint8(min(n1[x] * inverse + half, top))
                out[y, x, 2] = np.uint8(min(n2[x] * inverse + half, top))
        return out
