"""Exposure normalization for styles with thresholds in grey levels: a dark photo drawn as if it were normally exposed.

The `ghibli` teacher's colour windows, segmentation and ink thresholds are in grey levels, so a photo taken two stops
under merges into a few grey regions. Both the teacher and the student that learned it therefore brighten a dark
photo until its 99th-percentile luminance reaches a target, draw it, and darken the drawing back exactly: the cartoon
keeps the photo's own exposure and gets the regions of a normal one. The curve, in linear light, is
``y = g·x / (1 + (g - 1)·x)``: a gain of ``g`` on the shadows and mid-tones, 1 stays 1, so no highlight clips (a
street lamp in a night photo comes back as bright as it was) and `darken` inverts `brighten`. A photo already bright
enough gets a gain of 1 and is not touched. The gain is measured on the photo area-downsampled to a fixed size, so it
does not depend on the resolution the caller draws at; the teacher (`ghibligan.teachers.ghibli`) and the pipeline
(`Cartoonizer`, from a model's ``exposure_targets``) share these functions.

    >>> gain = exposure_gain(rgb, target=0.39)  # 1.0 for a normally exposed photo
    >>> bright = brighten(rgb, gain)            # uint8 in, uint8 out
    >>> cartoon = darken(draw(bright), gain)
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .image_io import check_uint8_rgb

MAX_EXPOSURE_GAIN = 4.0  # two stops: a darker photo is brightened only this much
MEASURE_SIDE = 128  # the percentile is taken on the photo area-downsampled to this long side
LINEAR_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec. 709 luminance of linear RGB


def to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] → linear light (the sRGB transfer function), float32."""
    srgb = np.asarray(srgb, np.float32)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


def to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear light → sRGB in [0, 1] (clipped), float32."""
    linear = np.clip(np.asarray(linear, np.float32), 0, 1)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055).astype(np.float32)


_LINEAR_OF_UINT8 = to_linear(np.arange(256, dtype=np.float32) / 255)  # (256,) the linear value of each grey level


def check_exposure_target(target) -> float:
    """``target`` as a float in [0, 1] (0: off), or a `ValueError`: it may come from an untrusted config."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target <= 1:
        raise ValueError(f"an exposure target must be a number in [0, 1] (0: off), got {target!r}.")
    return float(target)


def exposure_gain(rgb: np.ndarray, target: float, max_gain: float = MAX_EXPOSURE_GAIN) -> float:
    """The gain of `brighten` that brings the 99th-percentile luminance (linear light) of a uint8 RGB image (H, W, 3)
    to ``target`` (0-1): 1 for a photo already that bright (or ``target`` 0), at most ``max_gain``. Measured on the
    image area-downsampled to `MEASURE_SIDE`, so a photo and its downscaled copy get (nearly) the same gain."""
    check_uint8_rgb(rgb)
    if not target or rgb.size == 0:
        return 1.0
    height, width = rgb.shape[:2]
    scale = min(1.0, MEASURE_SIDE / max(height, width))
    small = rgb if scale == 1 else cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                                              interpolation=cv2.INTER_AREA)  # fmt: skip
    luminance = _LINEAR_OF_UINT8[small.reshape(-1, 3)] @ LINEAR_LUMA
    brightest = float(np.percentile(luminance, 99))
    if brightest >= target:
        return 1.0
    # the gain g of y = g·x / (1 + (g - 1)·x) that takes x = brightest to y = target
    gain = target * (1 - brightest) / max(brightest * (1 - target), 1e-12)
    return float(min(gain, max_gain))


def _check_gain(gain: float) -> None:
    if not math.isfinite(gain) or gain < 1:
        raise ValueError(f"`gain` must be a finite number >= 1, got {gain!r}.")


def _brighten_linear(x: np.ndarray, gain: float) -> np.ndarray:
    return gain * x / (1 + (gain - 1) * x)


def _darken_linear(y: np.ndarray, gain: float) -> np.ndarray:
    return y / (gain - (gain - 1) * y)


def _apply(image: np.ndarray, curve) -> np.ndarray:
    """``curve`` (on linear light) applied to uint8 RGB (a lookup table: uint8 out) or float sRGB in [0, 1]."""
    if image.dtype == np.uint8:
        return cv2.LUT(image, np.round(to_srgb(curve(_LINEAR_OF_UINT8)) * 255).astype(np.uint8))
    return to_srgb(curve(to_linear(image)))


def brighten(image: np.ndarray, gain: float) -> np.ndarray:
    """An RGB image (uint8, or float sRGB in [0, 1]) brightened by ``gain`` ≥ 1 in linear light, highlights rolled
    off (1 stays 1); the same dtype out (float: float32). A gain of 1 returns ``image`` itself."""
    _check_gain(gain)
    return image if gain == 1 else _apply(image, lambda x: _brighten_linear(x, gain))


def darken(image: np.ndarray, gain: float) -> np.ndarray:
    """The inverse of `brighten` with the same ``gain``: the drawing of a brightened photo back at the photo's own
    exposure."""
    _check_gain(gain)
    return image if gain == 1 else _apply(image, lambda y: _darken_linear(y, gain))
