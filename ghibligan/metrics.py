"""Image metrics that see structure, not only colour: how flat, how textured, how many colours, where the ink is.

PSNR and SSIM (from scikit-image) say how close two images are, and are dominated by tone and hue. A cartoon is also
*abstract*: large flat regions, little texture, a small palette, thin dark lines on object contours. The structure
metrics measure that, on one image at a time or against a photo / teacher:

- `flat_share` — share of pixels whose luma Sobel magnitude is below 8 (on 0–255);
- `gradient_energy` — mean luma Sobel magnitude; divide two of them for "gradient energy relative to the photo";
- `palette_size` — distinct colours at 5 bits per channel;
- `ink_f_score` — F-score of one image's dark-line pixels (`ink_mask`) against another's, within 1 px.

All functions take uint8 RGB arrays (H, W, 3), or anything `numpy.asarray` turns into one (PIL images).

    >>> from ghibligan.metrics import structure_metrics
    >>> structure_metrics(cartoon, photo=photo, teacher=target)
    {'flat_share': 0.71, 'gradient_energy': 4.2, 'gradient_energy_vs_photo': 0.55, ...}
"""

from __future__ import annotations

import cv2
import numpy as np

FLAT_THRESHOLD = 8.0  # luma Sobel magnitude (0-255 scale, unnormalized 3x3 Sobel) below which a pixel counts as flat


def _rgb(image) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image of shape (H, W, 3), got dtype {array.dtype} shape {array.shape}")
    return array


def luma(image) -> np.ndarray:
    """ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B) as float32 in [0, 255], shape (H, W)."""
    return cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2GRAY).astype(np.float32)


def sobel_magnitude(image) -> np.ndarray:
    """Gradient magnitude of the luma: ``sqrt(Sx² + Sy²)`` with OpenCV's unnormalized 3×3 Sobel kernels.

    Borders are reflected (``BORDER_REFLECT_101``). A ramp rising by ``s`` grey levels per pixel has magnitude ``8 s``,
    so the flat threshold of 8 means "changes by less than one grey level per pixel".
    """
    y = luma(image)
    return cv2.magnitude(cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3))


def flat_share(image, threshold: float = FLAT_THRESHOLD) -> float:
    """Share of pixels whose `sobel_magnitude` is below ``threshold``: 1.0 for a flat image, 0 for a checkerboard of
    2-px cells (a 1-px checkerboard is the 3×3 Sobel's blind spot, its Nyquist frequency: it counts as flat).

    Smooth gradients (a painted sky) count as flat as long as they change by less than ``threshold / 8`` grey levels
    per pixel; texture, noise and edges do not.
    """
    return float((sobel_magnitude(image) < threshold).mean())


def gradient_energy(image) -> float:
    """Mean `sobel_magnitude` over all pixels: 0 for a flat image; texture and noise raise it.

    Compare images of the same size: the ratio ``gradient_energy(cartoon) / gradient_energy(photo)`` is the "gradient
    energy relative to the photo" (below 1: less texture than the photo).
    """
    return float(sobel_magnitude(image).mean())


def palette_size(image, bits: int = 5) -> int:
    """Number of distinct colours after keeping the top ``bits`` bits of each channel (5: 32 levels per channel)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in [1, 8], got {bits}.")
    codes = (_rgb(image) >> (8 - bits)).astype(np.int32)
    return int(np.unique((codes[..., 0] << 16) | (codes[..., 1] << 8) | codes[..., 2]).size)


def ink_mask(image, radius: int = 2, contrast: float = 40.0, max_luma: float = 100.0) -> np.ndarray:
    """Dark-line pixels: thin dark strokes, not dark areas.

    A pixel is ink when its luma is at most ``max_luma`` and at least ``contrast`` below the morphological closing of
    the luma with a disc of radius ``radius`` (a black top-hat): the closing fills in dark structures narrower than
    ``2 * radius + 1`` pixels and leaves wider dark regions as they are, so a line is found and a shadow is not.

    Returns:
        `np.ndarray`: boolean mask of shape (H, W).
    """
    y = luma(image)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    black_top_hat = cv2.morphologyEx(y, cv2.MORPH_BLACKHAT, disc, borderType=cv2.BORDER_REPLICATE)
    return (black_top_hat >= contrast) & (y <= max_luma)


def ink_f_score(image, reference, tolerance: int = 1, **ink_kwargs) -> float:
    """F-score of ``image``'s `ink_mask` against ``reference``'s, with lines matched within ``tolerance`` pixels.

    Precision is the share of ``image``'s ink pixels that lie within ``tolerance`` pixels (chessboard distance) of a
    ``reference`` ink pixel; recall is the share of ``reference``'s ink pixels within ``tolerance`` of ``image``'s ink.
    F = 2PR / (P + R). Both without ink: 1.0 (they agree); exactly one without ink: 0.0.
    """
    a, b = ink_mask(image, **ink_kwargs), ink_mask(reference, **ink_kwargs)
    if a.shape != b.shape:
        raise ValueError(f"image and reference differ in size: {a.shape} vs {b.shape}")
    if not a.any() and not b.any():
        return 1.0
    if not a.any() or not b.any():
        return 0.0
    square = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_b = cv2.dilate(b.astype(np.uint8), square).astype(bool)
    near_a = cv2.dilate(a.astype(np.uint8), square).astype(bool)
    precision, recall = (a & near_b).sum() / a.sum(), (b & near_a).sum() / b.sum()
    return float(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


def _skimage_metrics():
    try:
        import skimage.metrics
    except ImportError as error:
        raise ImportError("PSNR and SSIM need scikit-image: pip install 'ghibligan[train]'") from error
    return skimage.metrics


def psnr(image, reference) -> float:
    """Peak signal-to-noise ratio in dB over RGB (`skimage.metrics.peak_signal_noise_ratio`, data range 255)."""
    peak_signal_noise_ratio = _skimage_metrics().peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(_rgb(reference), _rgb(image), data_range=255))


def ssim(image, reference) -> float:
    """Mean SSIM on luma with the settings of Wang et al. 2004 (Gaussian window σ = 1.5, population covariance).

    `skimage.metrics.structural_similarity` on the BT.601 luma of both images, data range 255.
    """
    structural_similarity = _skimage_metrics().structural_similarity

    return float(
        structural_similarity(
            luma(image),
            luma(reference),
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def structure_metrics(image, photo=None, teacher=None) -> dict[str, float]:
    """The structure metrics of ``image``, plus its gradient energy relative to ``photo`` / ``teacher`` and its ink-line
    F-score against ``teacher`` when those are given (same size as ``image``)."""
    energy = gradient_energy(image)
    metrics = {"flat_share": flat_share(image), "gradient_energy": energy, "palette_size": palette_size(image)}
    if photo is not None:
        metrics["gradient_energy_vs_photo"] = energy / max(gradient_energy(photo), 1e-6)
    if teacher is not None:
        metrics["gradient_energy_vs_teacher"] = energy / max(gradient_energy(teacher), 1e-6)
        metrics["ink_f_score"] = ink_f_score(image, teacher)
    return metrics
