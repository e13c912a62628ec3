"""Photometric variants of a photo: the same scene under other exposure, white balance, haze, sensor noise and JPEG.

A student trained only on well-exposed, clean photos is only shown its teacher there. ``make-pairs --photo_variants
N`` adds N variants of every *training* photo, each run through the teachers like a photo of its own, so the targets
are the teachers' real answers to the varied photo (an augmentation at training time could vary only the input, not
the target). `CONDITIONS` are single hard conditions (2 stops darker, σ 10 noise, ...) for measuring a student on
held-out photos unlike its training ones (``scripts/photo_conditions.py``). For the bundled model's recipe, two
variants per photo moved `toon` and `painterly` by -0.7 to +2.2 points under these conditions and cost `ghibli`
0.4-2 points everywhere (docs/experiments.md, session 20); its noise-adaptive smoothing
(`GuidedFilterGenerator(smoothing_noise=...)`) helped noisy photos more, for at most 0.6 points elsewhere, and ships
instead.

Each variant is drawn from a generator seeded by the photo's key and the variant's index (`variant_seed`): the same
photo gets the same variants in every run and whatever the order, so an interrupted make-pairs resumes exactly.

    >>> from ghibligan.photo_variants import PhotoVariation, vary_photo, variant_seed
    >>> dark_or_noisy = vary_photo(photo, variant_seed("holiday/001.jpg", 0))
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

VARIANT_SEPARATOR = "#variant"  # a variant's key: the photo's key + "#variant" + its index


@dataclass(frozen=True)
class PhotoVariation:
    """The ranges variants are drawn from (uniformly); each effect is applied in this order.

    The defaults span a phone's everyday failures: under- and over-exposure, a warm or cool cast, a hazy or backlit
    low-contrast scene, high-ISO noise, strong JPEG compression.
    """

    exposure: tuple[float, float] = (-1.8, 1.0)  # EV, a gain of 2**EV on linear light (sRGB as gamma 2.2)
    white_balance: float = 0.08  # each channel's linear gain drawn from [1 - x, 1 + x]
    haze_probability: float = 0.3
    haze: tuple[float, float] = (0.15, 0.4)  # share of a light veil blended over the photo
    veil: tuple[float, float] = (0.6, 0.9)  # the veil's grey level (0-1)
    noise_probability: float = 0.5
    noise: tuple[float, float] = (2.0, 10.0)  # σ of Gaussian noise, grey levels (0-255)
    jpeg_probability: float = 0.5
    jpeg_quality: tuple[int, int] = (25, 85)

    def __post_init__(self) -> None:
        bounds = {
            "exposure": (-8, 8),
            "haze": (0, 1),
            "veil": (0, 1),
            "noise": (0, 64),
            "jpeg_quality": (1, 95),
        }  # name: (min, max)
        for name, (minimum, maximum) in bounds.items():
            low, high = getattr(self, name)
            if not minimum <= low <= high <= maximum:
                raise ValueError(
                    f"PhotoVariation: `{name}` must be a (low, high) range within [{minimum}, {maximum}], got "
                    f"{(low, high)}."
                )
        for name in ("haze_probability", "noise_probability", "jpeg_probability", "white_balance"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"PhotoVariation: `{name}` must be in [0, 1], got {getattr(self, name)!r}.")


def variant_key(key: str, index: int) -> str:
    """The dataset key (``source``) of variant ``index`` of the photo ``key``."""
    return f"{key}{VARIANT_SEPARATOR}{index}"


def stable_hash(text: str) -> int:
    """A 64-bit integer of ``text``, the same in every run and on every machine (SHA-256: Python's ``hash`` is salted
    per process, and crc32 is linear, so similar keys such as 001.jpg, 002.jpg would not spread uniformly)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def variant_seed(key: str, index: int) -> np.random.Generator:
    """The generator of variant ``index`` of the photo ``key``: a function of both only (`stable_hash`)."""
    return np.random.default_rng(stable_hash(variant_key(key, index)))


def vary_photo(image: Image.Image, rng: np.random.Generator, variation: PhotoVariation | None = None) -> Image.Image:
    """One photometric variant of the RGB ``image`` (same size), drawn from ``rng`` within ``variation``'s ranges."""
    variation = variation or PhotoVariation()
    photo = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    linear = photo**2.2 * 2 ** rng.uniform(*variation.exposure)
    linear = linear * rng.uniform(1 - variation.white_balance, 1 + variation.white_balance, 3).astype(np.float32)
    varied = np.clip(linear, 0, 1) ** (1 / 2.2)
    if rng.random() < variation.haze_probability:
        share = rng.uniform(*variation.haze)
        varied = (1 - share) * varied + share * rng.uniform(*variation.veil)
    if rng.random() < variation.noise_probability:
        varied = varied + rng.normal(0.0, rng.uniform(*variation.noise) / 255, varied.shape).astype(np.float32)
    result = Image.fromarray((np.clip(varied, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < variation.jpeg_probability:
        buffer = io.BytesIO()
        result.save(buffer, "JPEG", quality=int(rng.integers(variation.jpeg_quality[0], variation.jpeg_quality[1] + 1)))
        result = Image.open(buffer).convert("RGB")
    return result


def _only(**effect: float | tuple[float, float]) -> PhotoVariation:
    """A variation with nothing but ``effect``, always applied at one value."""
    none = {"exposure": (0.0, 0.0), "white_balance": 0.0, "haze_probability": 0.0, "noise_probability": 0.0,
            "jpeg_probability": 0.0}  # fmt: skip
    return PhotoVariation(**{**none, **effect})


# One hard condition each, at or past the edge of the default ranges: the held-out photos put through one of these
# measure how a student holds up on photos unlike its training ones (`scripts/photo_conditions.py`).
CONDITIONS: dict[str, PhotoVariation] = {
    "dark": _only(exposure=(-2.0, -2.0)),  # a quarter of the light
    "bright": _only(exposure=(1.0, 1.0)),  # twice the light, highlights clipped
    "noisy": _only(noise_probability=1.0, noise=(10.0, 10.0)),  # high-ISO grain
    "hazy": _only(haze_probability=1.0, haze=(0.4, 0.4), veil=(0.8, 0.8)),  # backlit, low contrast
    "jpeg": _only(jpeg_probability=1.0, jpeg_quality=(20, 20)),  # a messenger app's recompression
}
