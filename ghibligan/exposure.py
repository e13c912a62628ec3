"""Exposure normalization for styles with thresholds in grey levels: a dark photo drawn as if it were normally exposed.

The `ghibli` teacher's colour windows, segmentation and ink thresholds are in grey levels, so a photo taken two stops
under merges into a few grey regions. Both the teacher and the student that learned it therefore brighten a dark
photo, in linear light, until its 99th-percentile luminance reaches a target, draw it, and darken the drawing back by
the same gain: the cartoon keeps the photo's own exposure and gets the regions of a normal one. A photo already bright
enough gets a gain of 1 and is not touched. The teacher (`ghibligan.teachers.ghibli`) and the pipeline
(`Cartoonizer`, from a model's ``exposure_targets``) share these functions, so they agree on every photo.

    >>> gain = exposure_gain(rgb, target=0.45)  # 1.0 for a normally exposed photo
    >>> bright = expose(rgb, gain)              # uint8 in, uint8 out
"""

from __future__ import annotations

import math

import cv2
import numpy as np

MAX_EXPOSURE_GAIN = 4.0  # two stops: a darker photo is brightened only this much
SAMPLE_STEP = 4  # the percentile is taken over every 4th pixel of every 4th row: ~11 k samples at 512 px
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
    """The gain in linear light that brings the 99th-percentile luminance of a uint8 RGB image (H, W, 3) to
    ``target`` (0-1): 1 for a photo already that bright (or ``target`` 0), at most ``max_gain``."""
    if not target or rgb.size == 0:
        return 1.0
    sample = rgb[::SAMPLE_STEP, ::SAMPLE_STEP].reshape(-1, 3)
    luminance = _LINEAR_OF_UINT8[sample] @ LINEAR_LUMA
    brightest = float(np.percentile(luminance, 99))
    return float(min(max(target / max(brightest, 1e-6), 1.0), max_gain))


def expose(image: np.ndarray, gain: float) -> np.ndarray:
    """``image`` times ``gain`` in linear light, clipped: uint8 (H, W, C) in → uint8 out (a lookup table), or float
    sRGB in [0, 1] → float32 sRGB in [0, 1]. A gain of 1 returns ``image`` itself."""
    if gain == 1:
        return image
    if not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"`gain` must be a finite number > 0, got {gain!r}.")
    if image.dtype == np.uint8:
        table = np.round(to_srgb(_LINEAR_OF_UINT8 * gain) * 255).astype(np.uint8)
        return cv2.LUT(image, table)
    return to_srgb(to_linear(image) * gain)
