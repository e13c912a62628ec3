"""Classical cartoon "teacher": photo → cartoon with OpenCV only, deterministic, no weights, fast.

Built from the three representations of White-box Cartoonization (Wang & Yu, CVPR 2020) and CartoonGAN's data
preparation:

1. **surface** — edge-preserving smoothing (guided filter with the photo as its own guide, then a bilateral pass):
   texture goes, edges stay;
2. **structure** — flattened colour: luminance quantized to a few soft levels in Lab (a *local* rule, so the same
   patch maps to the same colour in every photo, which a GAN can learn), a median filter on the levels so noise in
   shadows and on walls does not leave isolated dark blotches, and optional k-means palette snapping;
3. **lines** — dark ink along edges of the *smoothed* image, with specks below a minimum length removed, so lines
   follow real structure rather than texture noise (`ghibligan.contour_lines`, which a model's pipeline runs too).

Then colour grading (saturation, warmth, shadow lift). Presets give named looks; any parameter can be overridden.
The ``ghibli`` preset is a different pipeline (regions, cel shading, contour ink: see `ghibli.py`) with its own
`GhibliConfig`; `ToonTeacher` runs whichever the preset's config belongs to:

    >>> teacher = ToonTeacher("toon", line_strength=0.6)
    >>> cartoon = teacher(Image.open("photo.jpg"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

import cv2
import numpy as np
from PIL import Image

from ..contour_lines import ContourLines, apply_ink, line_mask, scaled_size, smooth_surface
from ..image_io import ImageInput, load_image
from .ghibli import GhibliConfig, ghiblify


@dataclass(frozen=True)
class ToonConfig:
    """Parameters of the toon teacher (see the module docstring for the stages)."""

    smooth_radius: int = 5  # guided-filter radius at 1024 px (scaled with the image)
    smooth_eps: float = 0.02  # guided-filter regularization, in (0-1 intensity)²
    bilateral_passes: int = 1
    levels: int = 6  # luminance levels; 0 keeps luminance continuous
    level_softness: float = 0.25  # 0 = hard steps, 0.5 = nearly continuous
    palette_colors: int = 0  # k-means palette in Lab; 0 = off
    saturation: float = 1.25
    warmth: float = 0.0  # shifts a*/b* towards warm tones (Lab units)
    shadow_lift: float = 0.0  # 0..1 lifts dark tones (gamma < 1)
    line_strength: float = 0.8  # 0 = no ink lines
    line_threshold: float = 0.12  # edge magnitude (0-1) that starts a line
    line_min_length: int = 24  # connected edge pixels below this are dropped (at 1024 px)
    texture_density: float = 0.12  # edge pixels where more than this fraction of the neighbourhood is edge: texture
    line_width: int = 1
    despeckle: int = 0  # median window on the levels (pixels at 1024 px) against isolated blotches; 0 = off

    def __post_init__(self) -> None:
        if self.smooth_radius < 0 or self.levels < 0 or self.palette_colors < 0 or self.line_width < 1:
            raise ValueError(f"ToonConfig: radii, levels, colours and widths must be >= 0 (>= 1 for width): {self}")
        if not 0 <= self.line_strength <= 1 or not 0 <= self.level_softness <= 0.5 or not 0 <= self.shadow_lift <= 1:
            raise ValueError(f"ToonConfig: line_strength, shadow_lift in [0, 1], level_softness in [0, 0.5]: {self}")

    def contour_lines(self) -> ContourLines | None:
        """The line stage's settings (`ghibligan.contour_lines.ContourLines`, whose fields are this config's of the
        same names), which a model's pipeline can run itself; None without lines."""
        if not self.line_strength:
            return None
        return ContourLines(**{field.name: getattr(self, field.name) for field in fields(ContourLines)})


PRESETS: dict[str, ToonConfig | GhibliConfig] = {
    # Flat cel look: strong smoothing, 5 hard-ish levels, punchy colour, dark outlines.
    "toon": ToonConfig(smooth_radius=8, smooth_eps=0.04, bilateral_passes=2, levels=5, level_softness=0.18,
                       saturation=1.35, line_strength=0.85, line_threshold=0.06, line_min_length=40, line_width=2,
                       texture_density=0.1, despeckle=6),
    # Soft painted look: gentle smoothing, soft levels, warm grading, lifted shadows, no outlines.
    "painterly": ToonConfig(smooth_radius=8, smooth_eps=0.03, bilateral_passes=2, levels=7, level_softness=0.3,
                            saturation=1.18, warmth=6.0, shadow_lift=0.25, line_strength=0.0),
    # Studio-Ghibli-like: flat regions that follow objects, one soft shadow tone each, lush greens and blues, thin ink.
    "ghibli": GhibliConfig(),
}  # fmt: skip


def _quantize_levels(lightness: np.ndarray, levels: int, softness: float) -> np.ndarray:
    """Soft staircase on L* in [0, 100]: flat within a level, a smooth ramp of width ``softness`` between levels."""
    step = 100.0 / levels
    position = lightness / step
    base = np.floor(position)
    fraction = position - base
    if softness > 0:
        ramp = np.clip((fraction - (1 - softness)) / softness, 0, 1)
        ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    else:
        ramp = (fraction >= 1).astype(np.float32)
    return np.clip((base + ramp + 0.5) * step, 0, 100)


def _despeckle(lightness: np.ndarray, size: int) -> np.ndarray:
    """Median filter of the quantized L* (``size`` × ``size``): islands of one level inside another that cover less
    than half the window (the dark blotches of a quantized shadow or a noisy wall) take their surroundings' level;
    borders between larger areas stay where they are."""
    as_uint8 = np.clip(lightness * 2.55 + 0.5, 0, 255).astype(np.uint8)  # medianBlur needs uint8 beyond 5 × 5
    return cv2.medianBlur(as_uint8, size).astype(np.float32) / 2.55


def _palette(lab: np.ndarray, colors: int) -> np.ndarray:
    """Snap Lab pixels to a k-means palette fitted on a subsample (fixed seed: deterministic)."""
    pixels = lab.reshape(-1, 3)
    sample = pixels[:: max(1, len(pixels) // 20000)].astype(np.float32)
    cv2.setRNGSeed(0)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, _, centers = cv2.kmeans(sample, colors, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    distances = ((pixels[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    return centers[distances.argmin(1)].reshape(lab.shape)


def toonify(rgb: np.ndarray, config: ToonConfig) -> np.ndarray:
    """uint8 RGB (H, W, 3) → uint8 RGB cartoon of the same size."""
    smoothed = smooth_surface(rgb, config.smooth_radius, config.smooth_eps, config.bilateral_passes)
    lab = cv2.cvtColor(smoothed.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)  # L in [0, 100], a/b ~[-128, 127]
    if config.palette_colors:
        lab = _palette(lab, config.palette_colors)
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    if config.shadow_lift:
        lightness = 100.0 * (lightness / 100.0) ** (1.0 - 0.5 * config.shadow_lift)
    if config.levels:
        lightness = _quantize_levels(lightness, config.levels, config.level_softness)
        if config.despeckle:
            lightness = _despeckle(lightness, scaled_size(config.despeckle, rgb) | 1)
    a, b = a * config.saturation + 0.3 * config.warmth, b * config.saturation + config.warmth
    out = cv2.cvtColor(np.dstack([lightness, a, b]).astype(np.float32), cv2.COLOR_LAB2RGB)
    if (lines := config.contour_lines()) is not None:  # edges of the smoothed photo (`ghibligan.contour_lines`)
        out = apply_ink(out, line_mask(smoothed, lines), lines.line_strength)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def render(rgb: np.ndarray, config: ToonConfig | GhibliConfig) -> np.ndarray:
    """uint8 RGB (H, W, 3) → uint8 RGB with the pipeline ``config`` belongs to: `toonify` or `ghiblify`."""
    return ghiblify(rgb, config) if isinstance(config, GhibliConfig) else toonify(rgb, config)


class ToonTeacher:
    """Photo → cartoon with `toonify` (or `ghiblify` for ``"ghibli"``). ``preset`` picks a look from `PRESETS`;
    keyword overrides adjust it.

    Args:
        preset (`str`, *optional*, defaults to `"toon"`): one of ``"toon"``, ``"painterly"``, ``"ghibli"``.
        **overrides: any field of the preset's config (`ToonConfig` or `GhibliConfig`), e.g. ``line_strength=0.5``.
    """

    def __init__(self, preset: str = "toon", **overrides):
        if preset not in PRESETS:
            raise ValueError(f"Unknown toon preset {preset!r}; choose one of {sorted(PRESETS)}.")
        self.preset = preset
        try:
            self.config = replace(PRESETS[preset], **overrides)
        except TypeError as error:  # an override that is not a field of this preset's config
            raise ValueError(f"Preset {preset!r} does not take {sorted(overrides)}: {error}") from error

    @property
    def name(self) -> str:
        """The ``--teacher`` value that reproduces this teacher (overrides are recorded in `describe`)."""
        return f"toon:{self.preset}"

    def describe(self) -> dict:
        return {"teacher": self.name, **asdict(self.config)}

    def __call__(self, image: ImageInput) -> Image.Image:
        loaded = load_image(image)
        return Image.fromarray(render(np.asarray(loaded.rgb), self.config))

    def generate(self, images: Sequence[ImageInput], keys: Sequence[str]) -> tuple[list[Image.Image], list[None]]:
        """The teacher interface `make_pairs` uses: outputs and per-photo seeds (none: this teacher is exact)."""
        return [self(image) for image in images], [None] * len(images)
