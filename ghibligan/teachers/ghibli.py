"""Classical "Studio Ghibli look" teacher: photo → flat painted regions, one soft shadow tone each, thin ink contours.

Designed from the non-photorealistic rendering literature rather than from luminance bands:

1. **surface** — mean-shift filtering (Comaniciu & Meer 2002, the classic of "painterly" abstraction, after a light
   bilateral pass) removes texture and keeps object edges;
2. **regions** — graph-based segmentation (Felzenszwalb & Huttenlocher 2004, ``cv2.ximgproc.segmentation``) of the
   smoothed image: regions follow objects, and each region is painted with its mean colour (Lab), corners rounded by a
   median filter, so there are no speckles and no dark blotches. The segmentation's greedy merges flip with a change
   of one grey level (the bokeh behind a butterfly becomes another patchwork), so ``region_runs`` segmentations, each
   of the smoothed image plus a fixed, seeded noise of ``region_jitter`` grey levels, are painted and averaged: the
   borders every run agrees on (object edges) stay crisp, the ones a grey level moves become a blend, the same on every
   copy of the photo;
3. **cel shading** — inside each region, pixels whose mean-shifted lightness is clearly below the region's get *one*
   soft shadow tone, a little cooler (``shading_keep`` can add back a share of the in-region gradient);
4. **painted skies** — regions where the photo itself is mostly a smooth gradient (a sky, a blurred background) are
   painted with the bilateral-smoothed photo instead of their mean, which would cut the gradient into bands; the
   choice is made per region, so it switches on region borders and leaves no halo around the objects in front;
5. **palette** — saturation up, more for greens and blues (lush foliage, deep skies), olive greens turned fresher,
   lifted shadows; no global warm shift, so white walls and skin keep their hue;
6. **ink** — a difference of Gaussians on the *flat* image (the DoG of Winnemöller et al. 2012, XDoG, with a soft
   threshold): it only sees region contours, never the photo's texture; pieces shorter than ``ink_min_length`` go.

The regions are computed at ``work_side`` pixels at most and the painted image upsampled, so a 1024-px photo costs
about the same as a 512-px one. The colour windows, the segmentation and the ink have thresholds in grey levels, so a
dark photo (its brightest tones under ``exposure_target`` in linear light) is brightened for them (`ghibligan.exposure`)
and its painting darkened back by the same curve: a photo taken 2 stops under gets the regions it would have at a
normal exposure instead of a few merged grey ones. Everything is deterministic (the segmentations' noise has fixed
seeds).

    >>> from ghibligan.teachers import make_teacher
    >>> cartoon = make_teacher("toon:ghibli")(Image.open("photo.jpg"))
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from ..exposure import MAX_EXPOSURE_GAIN, brighten, check_exposure_target, darken, exposure_gain


@dataclass(frozen=True)
class GhibliConfig:
    """Parameters of the ghibli teacher (see the module docstring for the stages). Pixel sizes are for 512 px."""

    work_side: int = 512  # regions are computed at most at this long side; larger photos are downscaled, then upsampled
    mean_shift_radius: int = 6  # mean-shift spatial window (pixels at the working size)
    mean_shift_color: float = 24.0  # mean-shift colour window (0-255)
    region_scale: float = 200.0  # Felzenszwalb's k: larger = bigger regions
    region_min_size: int = 40  # smallest region in pixels at 512 px (scaled with the area)
    region_runs: int = 8  # segmentations averaged (1: one segmentation, whose borders move with noise)
    region_jitter: float = 4.0  # σ in grey levels of the fixed, seeded noise each run after the first segments
    gradient_slope: float = 0.3  # where the photo's L* changes slower than this per pixel, keep its gradient; 0 = off
    shading_keep: float = 0.0  # share of the within-region lightness variation kept (0: flat regions + shadow tone)
    shadow_depth: float = 7.0  # L* drop of the one shadow tone
    shadow_threshold: float = 9.0  # L* below the region mean where the shadow starts
    shadow_softness: float = 3.0  # L* width of the soft shadow edge
    shadow_cool: float = 4.0  # b* (yellow → blue) shift inside shadows
    saturation: float = 1.2
    green_blue_saturation: float = 1.35  # saturation of greens and blues (foliage, sky, water)
    green_freshness: float = 0.2  # turns yellow-greens towards green (share of b* moved to -a*)
    max_chroma: float = 70.0  # saturation stops raising chroma here (Lab units)
    shadow_lift: float = 0.15  # 0..1 lifts dark tones (gamma < 1)
    ink_strength: float = 0.85  # 0 = no ink lines
    ink_threshold: float = 0.02  # DoG response (0-1 intensity) that starts a line
    ink_min_length: int = 12  # ink pieces whose bounding box is shorter than this are dropped (at 512 px)
    # a photo whose 99th-percentile luminance (linear light, 0-1) is below this is brightened to it for the stages
    # with thresholds, by at most `max_exposure_gain`, and the painting darkened back (`ghibligan.exposure`); 0 = off
    exposure_target: float = 0.39  # just under the darkest of ../shared/photos (0.397): none of them is changed
    max_exposure_gain: float = MAX_EXPOSURE_GAIN

    def __post_init__(self) -> None:
        if self.work_side < 64 or self.mean_shift_radius < 1 or self.region_scale <= 0 or self.region_min_size < 1:
            raise ValueError(
                f"GhibliConfig: work_side >= 64, mean_shift_radius >= 1, region_scale > 0, region_min_size >= 1: {self}"
            )
        if not 1 <= self.region_runs <= 64 or not 0 <= self.region_jitter <= 32:
            raise ValueError(f"GhibliConfig: region_runs must be in [1, 64] and region_jitter in [0, 32]: {self}")
        if not 0 <= self.ink_strength <= 1 or not 0 <= self.shading_keep <= 1 or not 0 <= self.shadow_lift <= 1:
            raise ValueError(f"GhibliConfig: ink_strength, shading_keep and shadow_lift must be in [0, 1]: {self}")
        check_exposure_target(self.exposure_target)
        if not 1 <= self.max_exposure_gain <= 64:
            raise ValueError(f"GhibliConfig: max_exposure_gain must be in [1, 64]: {self}")


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _surface(rgb: np.ndarray, config: GhibliConfig) -> np.ndarray:
    """Texture removed, edges kept: a light bilateral pass against JPEG noise, then mean-shift filtering (Comaniciu &
    Meer 2002), which flattens each object into plateaus with rounded, object-following borders."""
    smoothed = cv2.bilateralFilter(rgb, 5, 20, 3)
    return cv2.pyrMeanShiftFiltering(smoothed, config.mean_shift_radius, config.mean_shift_color, maxLevel=1)


def _regions(smoothed: np.ndarray, config: GhibliConfig) -> list[np.ndarray]:
    """Felzenszwalb-Huttenlocher segmentations, ``config.region_runs`` of them: int32 labels (H, W), 0..N-1 each. The
    first is of ``smoothed`` itself, the others of ``smoothed`` plus Gaussian noise of ``region_jitter`` grey levels,
    seeded by the run's index, so the teacher stays a deterministic function of the photo. The runs share OpenCV's
    threads (it releases the GIL while it segments): 2x faster on 2 cores, the same labels."""
    area_scale = smoothed.shape[0] * smoothed.shape[1] / (512 * 384)
    min_size = max(1, round(config.region_min_size * area_scale))

    def segment(run: int) -> np.ndarray:
        image = smoothed
        if run:
            noise = np.random.default_rng(run).normal(0.0, config.region_jitter, smoothed.shape)
            image = np.clip(smoothed + noise, 0, 255).round().astype(np.uint8)
        segmenter = cv2.ximgproc.segmentation.createGraphSegmentation(
            sigma=0.5, k=config.region_scale, min_size=min_size
        )
        return segmenter.processImage(image)

    workers = min(config.region_runs, max(1, cv2.getNumThreads()))
    if workers == 1:
        return [segment(run) for run in range(config.region_runs)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(segment, range(config.region_runs)))


def _region_means(values: np.ndarray, labelings: list[np.ndarray]) -> np.ndarray:
    """Each pixel replaced by the mean of its region, per channel, averaged over the segmentations: (H, W, C)
    float32."""
    total = np.zeros(values.shape, np.float64)
    for labels in labelings:
        flat = labels.ravel()
        count = np.maximum(np.bincount(flat), 1)
        means = np.stack([np.bincount(flat, values[..., c].ravel()) / count for c in range(values.shape[2])], -1)
        total += means[labels]
    return (total / len(labelings)).astype(np.float32)


def _gradient_weight(smooth_lab: np.ndarray, config: GhibliConfig) -> np.ndarray:
    """Painted skies: 1 where the photo itself is a smooth gradient (lightness changing by less than
    ``gradient_slope`` L* per pixel all around), so its smoothed colours can replace the region means, which would cut
    the gradient into bands; 0 near any edge or texture, so object contours stay crisp (no halos). Shape (H, W, 1)."""
    if not config.gradient_slope:
        return np.zeros((*smooth_lab.shape[:2], 1), np.float32)
    lightness = cv2.GaussianBlur(smooth_lab[..., 0], (0, 0), 1.5)
    slope = cv2.magnitude(cv2.Sobel(lightness, cv2.CV_32F, 1, 0), cv2.Sobel(lightness, cv2.CV_32F, 0, 1)) / 8
    reach = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * round(max(smooth_lab.shape[:2]) / 128) + 1,) * 2)
    steepest = cv2.dilate(slope, reach)  # the steepest slope nearby: an edge anywhere close keeps the regions
    return _smoothstep((config.gradient_slope - steepest) / (0.5 * config.gradient_slope))[..., None]


def _cel_shade(lightness: np.ndarray, flat_lab: np.ndarray, config: GhibliConfig) -> tuple[np.ndarray, np.ndarray]:
    """A compressed in-region gradient + one soft shadow tone, to add to the region's L*.

    The mean-shifted lightness is already smooth inside objects and crisp at their borders, so it is compared with its
    region's mean as it is (a spatial filter here would leak a dark neighbour in as a shadow rim: a halo); a median
    filter rounds the shadow shapes. Returns (ΔL*, shadow weight in [0, 1]).
    """
    detail = cv2.medianBlur(lightness, 5) - flat_lab[..., 0]
    shadow = _smoothstep((-detail - config.shadow_threshold) / config.shadow_softness + 0.5)
    kept = config.shading_keep * np.clip(detail, -config.shadow_threshold, 2 * config.shadow_threshold)
    return kept - shadow * config.shadow_depth, shadow


def _grade(lab: np.ndarray, shadow: np.ndarray, config: GhibliConfig) -> np.ndarray:
    """The palette: saturation (more for greens and blues), cool shadows, lifted darks. Neutral greys stay neutral."""
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    green = _smoothstep((-a - 2.0) / 8.0)  # a* < 0: greens and cyans
    green_or_blue = np.maximum(green, _smoothstep((-b - 4.0) / 10.0))  # b* < 0: blues
    a = a - config.green_freshness * np.clip(b, 0, None) * green  # olive, yellow-green → fresh green
    gain = config.saturation + (config.green_blue_saturation - config.saturation) * green_or_blue
    chroma = np.sqrt(a * a + b * b)
    gain = np.minimum(gain, np.maximum(config.max_chroma, chroma) / np.maximum(chroma, 1e-3))  # no clipped reds
    a, b = a * gain, b * gain - shadow * config.shadow_cool
    lightness = 100.0 * (np.clip(lightness, 0, 100) / 100.0) ** (1.0 - 0.5 * config.shadow_lift)
    return np.dstack([lightness, a, b]).astype(np.float32)


def _ink(painted: np.ndarray, config: GhibliConfig) -> np.ndarray:
    """Soft ink mask in [0, 1] on the dark side of the painted image's contours (DoG with a soft threshold)."""
    gray = cv2.cvtColor(painted, cv2.COLOR_RGB2GRAY)
    sigma = max(0.8, max(gray.shape) / 1024)
    dog = cv2.GaussianBlur(gray, (0, 0), sigma) - cv2.GaussianBlur(gray, (0, 0), 1.6 * sigma)
    ink = _smoothstep((-dog - config.ink_threshold) / config.ink_threshold)
    _, labels, stats, _ = cv2.connectedComponentsWithStats((ink > 0.5).astype(np.uint8), connectivity=8)
    extent = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])  # dots and specks are short
    keep = extent >= max(1, round(config.ink_min_length * max(gray.shape) / 512))
    keep[0] = False
    return ink * cv2.dilate(keep[labels].astype(np.uint8), np.ones((3, 3), np.uint8))


def ghiblify(rgb: np.ndarray, config: GhibliConfig) -> np.ndarray:
    """uint8 RGB (H, W, 3) → uint8 RGB in the ghibli look, same size."""
    height, width = rgb.shape[:2]
    scale = min(1.0, config.work_side / max(height, width))
    size = (round(width * scale), round(height * scale))
    work = rgb if scale == 1 else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    # a dark photo: the thresholds below see it as if it were normally exposed (`ghibligan.exposure`)
    gain = exposure_gain(work, config.exposure_target, config.max_exposure_gain)
    work = brighten(work, gain)
    smoothed = _surface(work, config)
    lab = cv2.cvtColor(smoothed.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)  # L in [0, 100]
    gentle = cv2.cvtColor(cv2.bilateralFilter(work, 9, 30, 6).astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
    # the colours, and the weight that is 1 where the photo is a smooth gradient (a sky), 0 near edges, in one pass over
    # the segmentations: decided per region, a region is painted either as a gradient or flat and the switch happens on
    # its border, not as a halo around the objects next to it
    means = _region_means(np.dstack([lab, _gradient_weight(gentle, config)]), _regions(smoothed, config))
    flat_lab = cv2.medianBlur(np.ascontiguousarray(means[..., :3]), 5)  # rounded corners, no speckles
    shading, shadow = _cel_shade(lab[..., 0], flat_lab, config)
    weight = cv2.medianBlur(_smoothstep(2 * means[..., 3] - 0.5), 5)[..., None]
    painted_lab = flat_lab + weight * (gentle - flat_lab)
    shading, shadow = shading * (1 - weight[..., 0]), shadow * (1 - weight[..., 0])  # gradients get no cel shadow
    graded = _grade(np.dstack([painted_lab[..., 0] + shading, painted_lab[..., 1:]]), shadow, config)
    painted = np.clip(cv2.cvtColor(graded, cv2.COLOR_LAB2RGB), 0, 1)
    if scale != 1:
        painted = cv2.resize(painted, (width, height), interpolation=cv2.INTER_LINEAR)
    if config.ink_strength:
        ink = _ink(painted, config)[..., None] * config.ink_strength
        painted = painted * (1 - ink) + 0.1 * ink  # near-black ink, blended
    painted = darken(painted, gain)  # back to the photo's own exposure: the drawing of the brightened photo, darkened
    return (np.clip(painted, 0, 1) * 255 + 0.5).astype(np.uint8)
