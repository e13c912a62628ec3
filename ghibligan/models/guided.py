"""Guided-filter generator: a style-conditioned network at low resolution, upsampled by a trainable guided filter.

Follows Deep Guided Filter (Wu et al., CVPR 2018, "Fast End-to-End Trainable Guided Filter"): the photo is
downsampled by ``scale_factor``, a small convolutional network predicts the cartoon there, and a guided filter (He et
al., 2010) fits, in every small window of the low-resolution image, a per-channel linear model ``cartoon ≈ A · guide +
b``. The coefficients ``A`` and ``b`` are upsampled bilinearly and applied to the *full-resolution* guide, a learned
per-pixel colour map of the photo. So the output is edge-aware by construction: where the low-resolution cartoon is
flat, ``A`` is near zero and the photo's texture is gone; where it has an edge that the photo has too, ``A`` is large
and the edge comes out at full resolution, as sharp as the photo's. The full-resolution work is a few per-pixel
operations, hence the speed (Deep Guided Filter and HDRNet report 10–100× over full-resolution networks).

```
photo (B, 3, H, W) ──area ÷s──▶ low (B, 3, H/s, W/s) ──low-res net + FiLM(style)──▶ cartoon_low (B, 3, H/s, W/s)
   │                              │                                                      │
   └──guide map (per-pixel MLP, style bias)──▶ guide (B, 3, H, W) and guide_low ─────────┤
                                                                    box-filter fit: A, b (B, 3, H/s, W/s), float32
   guide ──────────────────────────────────────────── A↑ · guide + b↑ (bilinear ×s) ──▶ output (B, 3, H, W)
```

Style conditioning: every residual block of the low-resolution network is modulated by FiLM (a per-style scale and
shift, zero at initialisation), and the guide map's hidden layer gets a per-style bias.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..contour_lines import ContourLines
from ..upsampling import MAX_SIGMA, MIN_SIGMA, is_sigma
from . import cpu_kernels
from .color import LUMA, lab_to_rgb, rgb_to_lab
from .hub import GhibliganHubMixin
from .layers import check_positive_int, inference_slice_rows, map_row_slices, row_slices
from .noise import noise_variance

UPSAMPLERS = ("guided_filter", "joint_bilateral")
LEVEL_SPACES = ("luma", "lab")  # what `LevelQuantizer` cuts its levels in and `LumaDespeckle` takes the median of
MAX_FLATTEN_DILATIONS, MAX_FLATTEN_DILATION = 8, 64  # dilated flattening passes, and their tap spacing
MIN_WORK_SIDE, MAX_WORK_SIDE = 64, 16384  # bounds of a style's `work_sides` entry (pixels, the photo's long side)


def luma(image: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """The `LUMA` of an RGB tensor whose channels lie along ``dim``, kept as a size-1 dimension: (B, 3, H, W) →
    (B, 1, H, W). With autograd (`LevelQuantizer` computes its own, in place, without one)."""
    red, green, blue = image.split(1, dim=dim)
    return LUMA[0] * red + LUMA[1] * green + LUMA[2] * blue


def straight_through_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x`` clamped to [low, high] in the forward pass, with the identity's gradient everywhere: a learned strength
    that a few steps pushed outside its range still gets a gradient and can come back (a plain clamp has none)."""
    return x + (x.clamp(low, high) - x).detach()


def pad_to_multiple_indexed(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """`ghibligan.models.layers.pad_to_multiple` as index gathers, with no Python branch on the size (so
    `torch.export` keeps the height and width dynamic): the same values, padding by 0 included.

    Returns the padded tensor and the ``(top, left)`` offsets of the original pixels in it.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = (multiple - height % multiple) % multiple, (multiple - width % multiple) % multiple  # no negatives
    top, left = pad_h // 2, pad_w // 2
    rows = torch.arange(-top, height + pad_h - top, device=x.device)  # source rows, before mirroring
    cols = torch.arange(-left, width + pad_w - left, device=x.device)
    # mirroring needs every pad smaller than its side (else repeat the edge, on both axes, as pad_to_multiple does)
    fits = ((rows > -height) & (rows < 2 * height - 1)).all() & ((cols > -width) & (cols < 2 * width - 1)).all()
    indices = []
    for index, size in ((rows, height), (cols, width)):
        mirrored = (size - 1) - ((size - 1) - index.abs()).abs()
        indices.append(torch.where(fits, mirrored, index.clamp(0, size - 1)))
    return x.index_select(-2, indices[0]).index_select(-1, indices[1]), (top, left)


def area_downsample_indexed(x: torch.Tensor, size: tuple[int, int], span: int) -> torch.Tensor:
    """``F.interpolate(x, size, mode="area")`` (adaptive average pooling) as index gathers, for `torch.export`:
    output pixel ``i`` averages input pixels ``[floor(i·H/h), ceil((i+1)·H/h))``, at most ``span`` of them. Equal to
    the area interpolation up to float rounding (the two axes are averaged one after the other)."""
    for dim, out_size in ((-2, size[0]), (-1, size[1])):
        in_size = x.shape[dim]
        start = torch.arange(out_size, device=x.device) * in_size // out_size
        end = (torch.arange(1, out_size + 1, device=x.device) * in_size + out_size - 1) // out_size
        index = start[:, None] + torch.arange(span, device=x.device)  # (out, span)
        weight = (index < end[:, None]).to(x.dtype) / (end - start)[:, None].to(x.dtype)  # (out, span)
        gathered = x.index_select(dim, index.clamp_max(in_size - 1).flatten())
        if dim == -2:  # (B, C, out * span, W) → (B, C, out, W)
            x = (gathered.unflatten(-2, (out_size, span)) * weight[:, :, None]).sum(-2)
        else:  # (B, C, H, out * span) → (B, C, H, out)
            x = (gathered.unflatten(-1, (out_size, span)) * weight).sum(-1)
    return x


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over each (2r+1)² window, windows clipped at the borders (so a constant image stays constant)."""
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


# The smallest regularization a guided filter uses, in squared [-1, 1] units: trained values sit near 1e-2, but a
# checkpoint's weights can ask for an ε that underflows float32 to 0, and then a flat window divides 0 by 0.
MIN_EPS = 1e-6


def guided_filter_coefficients(
    guide: torch.Tensor, source: torch.Tensor | None, radius: int, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A guided filter's per-pixel linear model ``source ≈ A · guide + b`` (He et al.), one per channel, fitted in
    every window of ``radius`` and averaged over the windows that contain each pixel: ``A``, ``b`` (B, C, h, w) in
    float32 (variances of bf16 values cancel catastrophically). ``source`` None: the guide filters itself (half the
    box filters). ``eps`` broadcasts against (B, C, 1, 1)."""
    guide = guide.float()
    mean_g = box_filter(guide, radius)
    var = (box_filter(guide * guide, radius) - mean_g * mean_g).clamp_min(0)
    if source is None:
        mean_s, cov = mean_g, var
    else:
        source = source.float()
        mean_s = box_filter(source, radius)
        cov = box_filter(guide * source, radius) - mean_g * mean_s
    a = cov / (var + eps)
    b = mean_s - a * mean_g
    return box_filter(a, radius), box_filter(b, radius)


MAX_SMOOTHING_NOISE = 1000.0  # bound on `smoothing_noise` from a config (5 is the bundled model's)
# on a photo larger than `smoothing_reference_side`, the photo smoothing's ε grows with the long side up to this many
# times: the largest scale measured (1024-px photos against a 512-px reference; ../shared/photos are at most 1024 px)
MAX_SMOOTHING_SCALE = 2.0


class PhotoSmoother(nn.Module):
    """An edge-preserving smoothing of the photo at full resolution for the price of a low-resolution one: the fast
    guided filter (He & Sun, 2015) of the photo by itself, its linear models fitted on the downsampled photo with a
    learned regularization per style and channel, upsampled bilinearly and applied to the full-resolution photo.

    Where a window's variance is well below ``eps`` (texture, noise) it returns the window's mean; where it is well
    above (an edge) it returns the photo, so an edge stays as sharp as the photo's own: the full-resolution edge-aware
    source that the teachers' own stages are fed (a guided filter + bilateral passes), which a half-resolution
    network surface cannot give.

    With ``noise_gain`` > 0, ε also grows with each photo's own noise: ``ε + gain · noise_variance(photo_low)``
    (gain learned per style). A fixed ε that keeps a clean photo's fine texture takes a noisy photo's grain for
    texture too, and the styles that keep the photo's detail (toon, painterly) draw it as speckles; the teachers'
    smoothing removes it.

    ``coefficients(photo_low, style)`` → ``A``, ``b`` (B, 3, h, w) float32; the smoothed photo is
    ``bilinear(A) · photo + bilinear(b)``.
    """

    def __init__(
        self, num_styles: int, radius: int = 1, eps: float = 1e-2, noise_gain: float = 0.0, reference_side: float = 0.0
    ):
        super().__init__()
        self.radius = radius
        self.reference_side = reference_side  # of the low-resolution photo; 0: ε whatever the photo's size
        self.log_eps = nn.Embedding(num_styles, 3)  # log ε per style and channel
        nn.init.constant_(self.log_eps.weight, math.log(eps))
        self.noise_gain = nn.Embedding(num_styles, 1) if noise_gain else None  # ε's share of the noise, per style
        if self.noise_gain is not None:
            nn.init.constant_(self.noise_gain.weight, noise_gain)

    def eps(
        self, style: torch.Tensor, photo_low: torch.Tensor | None = None, low_side: float | None = None
    ) -> torch.Tensor:
        """ε (B, 3, 1, 1) float32 of each image's style, at least `MIN_EPS`; raised by each photo's noise when the
        smoother has a ``noise_gain`` and ``photo_low`` is given."""
        eps = self.log_eps(style).float().exp().clamp_min(MIN_EPS)
        if self.noise_gain is not None and photo_low is not None:
            gain = self.noise_gain(style).float().clamp_min(0.0).clamp_max(MAX_SMOOTHING_NOISE)  # (B, 1)
            eps = eps + gain * noise_variance(photo_low)[:, None]
        if self.reference_side and photo_low is not None:
            eps = eps * self.size_scale(photo_low, low_side)
        return eps[:, :, None, None]

    def size_scale(self, photo_low: torch.Tensor, low_side: float | None = None) -> torch.Tensor:
        """How much ε grows on this photo: its long side over `reference_side`, in [1, `MAX_SMOOTHING_SCALE`], a
        float32 scalar. The window is fixed in pixels, so on a larger photo it holds less of the scene's variation
        and a fixed ε smooths less than the teachers, whose windows grow with the photo. ``low_side``: the whole
        photo's long side at low resolution where ``photo_low`` is a tile of it; else ``photo_low``'s own, computed
        from tensors (the sizes as sums of ones), so the exported graph takes it at any size without a branch on the
        size."""
        if low_side is not None:
            side = torch.tensor(float(low_side), device=photo_low.device)
        else:
            ones = photo_low.new_ones(()).float().expand(photo_low.shape[-2:])  # (h, w), no memory
            side = torch.maximum(ones[:, 0].sum(), ones[0].sum())
        return (side / self.reference_side).clamp(1.0, MAX_SMOOTHING_SCALE)

    def coefficients(
        self, photo_low: torch.Tensor, style: torch.Tensor, low_side: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return guided_filter_coefficients(photo_low, None, self.radius, self.eps(style, photo_low, low_side))

    def fused_coefficients(
        self, photo_low: torch.Tensor, style: torch.Tensor, low_side: float | None = None
    ) -> torch.Tensor:
        """``A`` and ``b`` as one (B, 6, h, w) tensor, by `cpu_kernels.self_guided_coefficients` (float32 on the CPU,
        no autograd), for `cpu_kernels.output_stage`."""
        eps = self.eps(style, photo_low, low_side)[:, :, 0, 0]
        return cpu_kernels.self_guided_coefficients(photo_low, eps, self.radius)

    def forward(
        self, photo_low: torch.Tensor, photo: torch.Tensor, style: torch.Tensor, low_side: float | None = None
    ) -> torch.Tensor:
        a, b = self.coefficients(photo_low, style, low_side)
        ab = torch.cat([a, b], dim=1).to(photo.dtype)
        a, b = F.interpolate(ab, size=photo.shape[-2:], mode="bilinear", align_corners=False).chunk(2, dim=1)
        return torch.addcmul(b, a, photo)  # (B, 3, H, W)


class GuidedFilter(nn.Module):
    """Fast guided filter (He & Sun, 2015) with a trainable regularization, one linear model per channel.

    ``forward(guide_low, source_low, guide)``: fit ``source_low ≈ A · guide_low + b`` in every window of radius
    ``radius`` (low resolution), average the coefficients over the windows, upsample them bilinearly to ``guide``'s
    size and return ``A · guide + b``. The statistics are computed in float32 whatever the input dtype (variances of
    bf16 values cancel catastrophically); the full-resolution step runs in the input dtype.

    Args:
        channels (`int`): channels of guide and source (one linear model each).
        radius (`int`, *optional*, defaults to 1): window radius at low resolution.
        eps (`float`, *optional*, defaults to 1e-2): initial regularization, in squared [-1, 1] units. Larger flattens
            more: a window whose guide variance is well below ``eps`` is replaced by its mean.
    """

    def __init__(self, channels: int, radius: int = 1, eps: float = 1e-2):
        super().__init__()
        self.radius = radius
        # eps = softplus(raw) > 0, one per channel, trainable
        self.raw_eps = nn.Parameter(torch.full((1, channels, 1, 1), math.log(math.expm1(eps))))

    @property
    def eps(self) -> torch.Tensor:
        """ε (1, C, 1, 1) float32, at least `MIN_EPS`."""
        return F.softplus(self.raw_eps.float()).clamp_min(MIN_EPS)

    def coefficients(self, guide_low: torch.Tensor, source_low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel ``A``, ``b`` (B, C, h, w) in float32, averaged over the windows that contain each pixel."""
        return guided_filter_coefficients(guide_low, source_low, self.radius, self.eps)

    def forward(self, guide_low: torch.Tensor, source_low: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        a, b = self.coefficients(guide_low, source_low)  # (B, C, h, w)
        ab = torch.cat([a, b], dim=1).to(guide.dtype)  # one upsampling for both: (B, 2C, h, w)
        a, b = F.interpolate(ab, size=guide.shape[-2:], mode="bilinear", align_corners=False).chunk(2, dim=1)
        return torch.addcmul(b, a, guide)  # (B, C, H, W)


def _bilinear_taps(position: int, scale_factor: int) -> tuple[tuple[int, float], ...]:
    """The low-resolution taps of full-resolution pixel ``i * scale_factor + position`` in a bilinear ×scale_factor
    resize (``align_corners=False``, as `F.interpolate`): ``(offset from i, weight)`` pairs of non-zero weight."""
    source = (position + 0.5) / scale_factor - 0.5  # in (-0.5, 0.5)
    first = math.floor(source)
    fraction = source - first
    return tuple((offset, weight) for offset, weight in ((first, 1 - fraction), (first + 1, fraction)) if weight > 0)


class JointBilateralUpsampler(nn.Module):
    """Joint bilateral upsampling (Kopf et al., SIGGRAPH 2007) by an integer factor, with a trainable range: each
    full-resolution pixel is a weighted mean of the 2×2 low-resolution samples around it, weighted by the bilinear
    weights times ``exp(-|guide - guide_low|² / 2σ²)``, how close the low-resolution guide there is to the pixel's own.

    Unlike a guided filter (``A · guide + b``), the output is a convex combination of source values, so it never brings
    the guide's texture back: where the source is flat the output is flat, and where it has an edge the guide has too,
    each pixel takes the side whose guide colour it matches, so the edge comes out as sharp as the guide's. Measured on
    the teacher pairs with a perfect ½-resolution source (``scripts/output_stage_ceiling.py``): flat share 0.87× the
    teacher's against 0.68× for the guided filter, 88.6 % against 84.8 % of the error removed (``toon:ghibli``).

    ``forward(guide_low, source_low, guide)``: guide (B, G, H, W), guide_low (B, G, h, w), source_low (B, C, h, w)
    with ``h = ceil(H / scale_factor)`` → (B, C, H, W). The full-resolution pixels are computed in ``scale_factor²``
    phases (pixel ``(i·s + a, j·s + b)`` has fixed taps and bilinear weights for each ``(a, b)``), each a few
    slices of low-resolution-sized tensors, then interleaved by a pixel shuffle: no gathers.

    Args:
        scale_factor (`int`): the upsampling factor.
        sigma (`float`, *optional*, defaults to 0.1): initial range σ (trainable), in [-1, 1] guide units.
    """

    # at inference, slices of about this many low-resolution pixels (whole rows, 1 row of halo) so that the phases'
    # tensors stay in cache; None: one pass
    inference_pixels: int | None = 65536

    def __init__(self, scale_factor: int, sigma: float = 0.1):
        super().__init__()
        self.scale_factor = scale_factor
        self.raw_sigma = nn.Parameter(torch.tensor(math.log(sigma)))

    @property
    def sigma(self) -> torch.Tensor:
        return self.raw_sigma.float().exp()

    def forward(self, guide_low: torch.Tensor, source_low: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        rows = inference_slice_rows(self, *guide_low.shape[-2:])
        if rows is None:
            return self._upsample(guide_low, source_low, guide)
        scale, height, parts = self.scale_factor, guide.shape[-2], []
        # a full-resolution row's taps are the low-resolution rows around it: 1 row of halo keeps the slices exact
        for top, bottom, start, stop in row_slices(guide_low.shape[-2], rows, halo=1):
            low, full = slice(top, bottom), slice(top * scale, bottom * scale)  # full: up to H in the last slice
            out = self._upsample(guide_low[..., low, :], source_low[..., low, :], guide[..., full, :])
            parts.append(out[..., (start - top) * scale : (stop - top) * scale, :])
        return torch.cat(parts, dim=-2)[..., :height, :]

    def _upsample(self, guide_low: torch.Tensor, source_low: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        scale, channels = self.scale_factor, source_low.shape[1]
        (height, width), (low_height, low_width) = guide.shape[-2:], guide_low.shape[-2:]
        # full resolution padded to (h·s, w·s); low resolution by one pixel, so every tap is a slice
        guide = F.pad(guide, (0, low_width * scale - width, 0, low_height * scale - height), mode="replicate")
        guide = guide.contiguous()  # planar, so that pixel_unshuffle below gives each phase as a contiguous plane
        both = torch.cat([source_low.to(guide.dtype), guide_low.to(guide.dtype)], dim=1)  # (B, C + G, h, w)
        both = F.pad(both, (1, 1, 1, 1), mode="replicate")  # (B, C + G, h + 2, w + 2)
        minus_inv_two_var = (-0.5 / self.sigma.square()).to(guide.dtype)
        # the full-resolution pixels of each phase, as contiguous planes: (B, G, s, s, h, w)
        guide_phases = F.pixel_unshuffle(guide, scale).unflatten(1, (-1, scale, scale))
        phases = []
        for a in range(scale):
            for b in range(scale):
                pixels = guide_phases[:, :, a, b]  # (B, G, h, w): the full-resolution pixels of phase (a, b)
                numerator = denominator = None
                for (dy, wy), (dx, wx) in itertools.product(_bilinear_taps(a, scale), _bilinear_taps(b, scale)):
                    tap = both[..., 1 + dy : 1 + dy + low_height, 1 + dx : 1 + dx + low_width]  # (B, C + G, h, w)
                    distance = (pixels - tap[:, channels:]).square().sum(1, keepdim=True)  # (B, 1, h, w)
                    # bilinear weight × range weight = exp(log(wy·wx) - d²/2σ²), + 1e-6: never all zero
                    weight = (distance * minus_inv_two_var).add_(math.log(wy * wx)).exp_() + 1e-6
                    if numerator is None:
                        numerator, denominator = tap[:, :channels] * weight, weight
                    else:  # in place: autograd needs none of the sums' values
                        numerator.addcmul_(tap[:, :channels], weight)
                        denominator = denominator + weight
                phases.append(numerator / denominator)  # (B, C, h, w)
        interleaved = F.pixel_shuffle(torch.stack(phases, dim=2).flatten(1, 2), scale)  # (B, C, h·s, w·s)
        return interleaved[..., :height, :width]


class RegionFlattener(nn.Module):
    """Iterated bilateral filtering of an image by itself (the fixed-window form of mean-shift filtering, Comaniciu &
    Meer 2002, which the teachers use): each pass replaces a pixel by the mean of its (2r+1)² window weighted by
    ``exp(-|x_q - x_p|² / 2σ²)``. Texture (differences well below σ) averages out, edges (well above σ) stay, and a
    few passes leave plateaus: flat regions with sharp borders, which an L1-trained network cannot commit to by itself
    (it averages over where the teacher's borders could be). One learned range σ per style (less flattening for
    styles that keep detail).

    A window's reach costs its area, so regions wider than a few windows stay shaded. ``dilations`` adds, after those
    passes, one pass of a 3×3 window per entry whose taps are that many pixels apart (the à-trous scheme of the
    edge-avoiding wavelets, Dammertz et al. 2010): dilations 2, 4, 8 reach 14 pixels further (three passes of radius
    2 reach 6) for 8 neighbours a pass, and the range weights keep each pass inside its region. These passes have a
    learned σ per style of their own, so a style that keeps detail can switch them off (σ → 0) and keep the others.

    Args:
        num_styles (`int`): rows of the σ tables.
        iterations (`int`): passes of the (2r+1)² window.
        radius (`int`, *optional*, defaults to 2): their window radius.
        sigma (`float`, *optional*, defaults to 0.1): initial range σ of every style (both tables), in [-1, 1] units.
        dilations (`Sequence[int]`, *optional*, defaults to `()`): tap spacing of each dilated 3×3 pass, in order.
    """

    # at inference, slices of about this many pixels (whole rows, with the passes' reach as halo) so that the
    # passes' tensors stay in cache; None: one pass
    inference_pixels: int | None = 65536

    def __init__(
        self, num_styles: int, iterations: int, radius: int = 2, sigma: float = 0.1, dilations: Sequence[int] = ()
    ):
        super().__init__()
        self.iterations, self.radius, self.dilations = iterations, radius, tuple(dilations)
        self.log_sigma = nn.Embedding(num_styles, 1)
        nn.init.constant_(self.log_sigma.weight, math.log(sigma))
        self.log_sigma_dilated = nn.Embedding(num_styles, 1) if self.dilations else None
        if self.log_sigma_dilated is not None:
            nn.init.constant_(self.log_sigma_dilated.weight, math.log(sigma))

    @property
    def reach(self) -> int:
        """How many pixels away a pixel of the output still depends on."""
        return self.iterations * self.radius + sum(self.dilations)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # planar: the shifted views below are 1.7x slower channels-last (3 channels)

        def minus_inv_two_var(log_sigma: nn.Embedding) -> torch.Tensor:  # -1 / 2σ², per image: (B, 1, 1, 1)
            return (-0.5 * torch.exp(-2 * log_sigma(style).float())).to(x.dtype)[:, :, None, None]

        # (radius, dilation, -1 / 2σ²) of each pass: the plain ones, then the dilated 3x3 ones
        passes = [(self.radius, 1, minus_inv_two_var(self.log_sigma))] * self.iterations
        if self.log_sigma_dilated is not None:
            dilated = minus_inv_two_var(self.log_sigma_dilated)
            passes += [(1, dilation, dilated) for dilation in self.dilations]
        if x.dtype == torch.float32 and cpu_kernels.usable(x, self.log_sigma.weight):  # one loop nest, ~5x faster
            return cpu_kernels.flatten(x, passes)

        def flatten(part: torch.Tensor) -> torch.Tensor:
            for radius, dilation, scale in passes:
                part = self._flatten(part, scale, radius, dilation)
            return part

        # a pixel after all passes depends on the rows within `reach`: that halo keeps the slices exact
        return map_row_slices(self, x, flatten, halo=self.reach)

    @staticmethod
    def _flatten(x: torch.Tensor, minus_inv_two_var: torch.Tensor, radius: int, dilation: int = 1) -> torch.Tensor:
        """One pass: each pixel the bilateral mean of its (2r+1)² window, taps ``dilation`` pixels apart."""
        pad, (height, width) = radius * dilation, x.shape[-2:]
        # Each weight is symmetric, w(p, p + o) = w(p + o, p): computed once for the half of the window's offsets
        # (dy, dx) > (0, 0) over the padded image, it serves the pixel at p (neighbour p + o) and the one at p + o
        # (neighbour p). Half the distances and exponentials of a plain loop over the window. Offsets are multiples of
        # the dilation, so the padding (the farthest offset) is radius × dilation.
        half = [
            (dy * dilation, dx * dilation)
            for dy in range(radius + 1)
            for dx in range(-radius, radius + 1)
            if (dy, dx) > (0, 0)
        ]
        padded = F.pad(x, (pad,) * 4, mode="replicate")  # (B, C, H + 2p, W + 2p)
        numerator, denominator = x.clone(), 1.0  # the centre, weight 1 (numerator accumulates in place)
        for dy, dx in half:
            left, right = max(0, -dx), max(0, dx)  # columns of q where both q and q + o are in the padded image
            rows_q, cols_q = slice(0, height + 2 * pad - dy), slice(left, width + 2 * pad - right)
            rows_o, cols_o = slice(dy, height + 2 * pad), slice(left + dx, width + 2 * pad - right + dx)
            distance = (padded[..., rows_o, cols_o] - padded[..., rows_q, cols_q]).square().sum(1, keepdim=True)
            weight = (distance * minus_inv_two_var).exp_()  # (B, 1, ...): w(q, q + o), q from (0, left)
            # pixel p (padded p + pad): neighbour p + o with w(p + pad, ...); neighbour p - o with w(p + pad - o, .)
            forward = weight[..., pad : pad + height, pad - left : pad - left + width]
            backward = weight[..., pad - dy : pad - dy + height, pad - dx - left : pad - dx - left + width]
            ahead = padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]
            behind = padded[..., pad - dy : pad - dy + height, pad - dx : pad - dx + width]
            # in place: a pass over the image fewer per term, and autograd needs none of the sums' values
            numerator.addcmul_(forward, ahead).addcmul_(backward, behind)
            denominator = forward + backward + denominator
        return numerator / denominator


class StyleColorMap(nn.Module):
    """Per-pixel colour map ``x + MLP(x)`` (1×1 convs, LeakyReLU), a per-style bias on each hidden layer; the
    identity at initialisation (last layer and style biases zero).

    Run on full-resolution images in slices of whole rows, about ``inference_pixels`` pixels each, at inference, so
    the hidden activations stay in cache (``None``: one pass). Computes in the dtype of its input, whatever its
    weights' (they are tiny, and cast per call): the generator feeds it float32 on CPU from a bf16 model.

    Args:
        channels (`int`): image channels.
        hidden (`int`): width of the hidden layers.
        num_styles (`int`): number of styles (rows of the bias tables).
        num_layers (`int`, *optional*, defaults to 2): hidden layers.
    """

    # float32, 2 cores: 512² in 4.7 ms (slices of 131072 pixels: 21 ms); 3840×2160 in 188 ms, where slices of 64 rows
    # (245760 pixels) took 700 ms
    inference_pixels: int | None = 65536

    def __init__(self, channels: int, hidden: int, num_styles: int, num_layers: int = 2):
        super().__init__()
        self.hidden_layers = nn.ModuleList(
            nn.Conv2d(channels if i == 0 else hidden, hidden, 1) for i in range(num_layers)
        )
        self.style_bias = nn.Embedding(num_styles, num_layers * hidden)
        self.conv_out = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.style_bias.weight)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _map(self, x: torch.Tensor, biases: tuple[torch.Tensor, ...], weights: list) -> torch.Tensor:
        hidden = x
        for (weight, bias), style_bias in zip(weights[:-1], biases, strict=True):
            hidden = F.leaky_relu(F.conv2d(hidden, weight, bias) + style_bias, 0.2)
        return x + F.conv2d(hidden, *weights[-1])

    def folded_weights(self, style: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For `cpu_kernels.output_stage`, a map of two hidden layers with each image's style biases folded into
        the layers' biases, float32: w1 (B, K, C), b1 (B, K), w2 (B, K, K), b2 (B, K), w3 (C, K), b3 (C,)."""
        if len(self.hidden_layers) != 2:
            raise ValueError(f"folded_weights needs 2 hidden layers, this map has {len(self.hidden_layers)}.")
        batch = style.shape[0]
        biases = self.style_bias(style).float().chunk(2, dim=1)  # (B, K) each
        folded = []
        for layer, style_bias in zip(self.hidden_layers, biases, strict=True):
            weight = layer.weight.float()[:, :, 0, 0]  # (K, in)
            folded += [weight.expand(batch, *weight.shape), layer.bias.float() + style_bias]
        return (*folded, self.conv_out.weight.float()[:, :, 0, 0], self.conv_out.bias.float())

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        weights = [(layer.weight.to(x.dtype), layer.bias.to(x.dtype)) for layer in [*self.hidden_layers, self.conv_out]]
        biases = self.style_bias(style).to(x.dtype)[:, :, None, None].chunk(len(self.hidden_layers), dim=1)
        return map_row_slices(self, x, lambda part: self._map(part, biases, weights))


def estimate_levels(
    luma: torch.Tensor, min_levels: float = 2.5, max_levels: float = 16.0
) -> tuple[float, float, float]:
    """The luma levels of posterized images, from their luma values alone: ``(step, offset, concentration)``.

    For each candidate step (``2 / L`` for ``L`` from ``min_levels`` to ``max_levels`` levels over [-1, 1], in
    quarters), the values' phase ``2π · luma / step`` is averaged on the unit circle (a comb, or one bin of a
    periodogram): the mean's length, the *concentration*, is near 1 when the values sit on levels ``step`` apart, and
    near 0 for a continuous image (0.1–0.2 for the ghibli teacher's painted regions, 0.6–0.7 for the toon teacher's 5
    levels); its angle is where the levels' centres are, hence ``offset`` (levels centred on ``offset + step · (k +
    0.5)``). Levels ``step`` apart also sit on every finer comb ``step / m``, so the coarsest step whose peak comes
    within 15 % of the best one wins. At most 2²⁰ values are used (evenly spaced).
    """
    luma = luma.flatten().double()
    luma = luma[:: max(1, luma.numel() >> 20)]
    steps = [2.0 / (quarter / 4) for quarter in range(round(4 * min_levels), round(4 * max_levels) + 1)]
    means = []
    for step in steps:
        phase = 2 * math.pi * luma / step
        means.append(torch.complex(phase.cos().mean(), phase.sin().mean()))
    lengths = [mean.abs().item() for mean in means]
    peaks = [
        i for i, length in enumerate(lengths) if length >= max(lengths[max(0, i - 1) : i + 2]) and length > 0
    ]  # local maxima, coarsest (fewest levels) first
    best = next(i for i in peaks if lengths[i] >= 0.85 * max(lengths))
    step = steps[best]
    centre = means[best].angle().item() / (2 * math.pi) * step
    return step, (centre - step / 2) % step, lengths[best]


class LevelQuantizer(nn.Module):
    r"""Posterization that the network cannot smear: the output's luma snapped to a staircase of flat levels, with a
    learned step, offset, edge softness and strength per style.

    An L1-trained network that must draw a teacher's quantized luminance (``toon``'s 5 levels, ``painterly``'s 7)
    learns a blurred staircase: where it is unsure on which side of a level border a pixel lies, the median is a ramp.
    Here the network only draws the smooth luma before quantization (an easy, smooth target) and this stage cuts it
    into levels at full resolution, so the borders are as sharp as the staircase's ramps:

    ``t = (y - offset) / step``, ``q = offset + step · (floor(t) + 0.5 + smoothstep((frac(t) - 1 + s) / s))``,
    ``output = x + strength · (q - y)`` on every channel (a grey shift: the hue stays), with ``y`` the BT.601 luma.

    Training sees the hard staircase (a straight-through estimator, as in quantization-aware training: the luma's
    gradient passes as if the stage were the identity), so a pixel on the wrong level is pushed across its border.
    The step, offset and softness get the staircase's own gradient, which moves levels that are near the teacher's
    onto them, but not levels half a step off (there the errors above and below a border cancel): `set_levels` starts
    a style where its targets' levels are (`estimate_levels`; training does this before its first step). The strength,
    in [0, 1], is 0 at construction (the identity), and each style learns how much posterization it has.

    With ``space="lab"`` the staircase is cut in CIE L* instead (`ghibligan.models.color`, scaled to [-1, 1] as
    ``L* / 50 - 1``), the a* and b* kept and scaled by a learned chroma gain per style (1 at construction): the toon
    teachers quantize L*, whose levels are no fixed luma (a green's L* level is another luma than a grey's), and a
    per-pixel map fitted to the toon teacher reached 83 % of its error removed with L* levels and 54 % with luma ones
    (docs/experiments.md, session 11). Torch only: the fused CPU kernels cover the luma space.

    Args:
        num_styles (`int`): rows of the parameter tables.
        levels (`int`): initial number of levels over the luma range (step ``2 / levels`` in [-1, 1] units).
        softness (`float`, *optional*, defaults to 0.2): initial share of a step taken by the ramp between levels.
        space (`str`, *optional*, defaults to `"luma"`): `"luma"` (BT.601, a grey shift) or `"lab"` (CIE L*).
    """

    # at inference, slices of about this many pixels (whole rows), so the per-pixel temporaries stay in cache
    inference_pixels: int | None = 65536
    # the strength moves ``STRENGTH_RATE`` times faster than the other parameters under Adam (a per-parameter
    # learning rate without an optimizer parameter group: 0 → 1 in ~100 steps at lr 1e-3, not ~1000)
    STRENGTH_RATE = 10.0

    def __init__(self, num_styles: int, levels: int, softness: float = 0.2, space: str = "luma"):
        super().__init__()
        if space not in LEVEL_SPACES:
            raise ValueError(f"`space` must be one of {LEVEL_SPACES}, got {space!r}.")
        self.space = space
        self.log_step = nn.Embedding(num_styles, 1)
        self.offset = nn.Embedding(num_styles, 1)
        self.raw_softness = nn.Embedding(num_styles, 1)
        self.raw_strength = nn.Embedding(num_styles, 1)
        nn.init.constant_(self.log_step.weight, math.log(2.0 / levels))
        nn.init.zeros_(self.offset.weight)
        nn.init.constant_(self.raw_softness.weight, math.log(softness / (1 - softness)))
        nn.init.zeros_(self.raw_strength.weight)
        if space == "lab":  # log of the a*, b* gain per style
            self.log_chroma = nn.Embedding(num_styles, 1)
            nn.init.zeros_(self.log_chroma.weight)

    def signal(self, rgb: torch.Tensor) -> torch.Tensor:
        """What the levels are cut in, for RGB in [-1, 1] with channels first, (3, ...) → (...): the BT.601 luma, or
        ``L* / 50 - 1`` in the lab space (`fit_level_quantizer` estimates each style's levels on it)."""
        if self.space == "luma":
            return luma(rgb, dim=0)[0]
        return rgb_to_lab(rgb.reshape(1, 3, -1, 1))[0, 0].reshape(rgb.shape[1:]) / 50 - 1

    @torch.no_grad()
    def set_levels(self, style: int, step: float, offset: float, strength: float) -> None:
        """Start ``style`` at levels ``step`` apart (luma in [-1, 1]), centred on ``offset + step · (k + 0.5)``, at
        ``strength`` in [0, 1] (e.g. from `estimate_levels` on the style's training targets)."""
        self.log_step.weight[style] = math.log(step)
        self.offset.weight[style] = offset
        self.set_strength(style, strength)

    @torch.no_grad()
    def set_strength(self, style: int, strength: float) -> None:
        """Set ``style``'s strength, clamped to [0, 1] (0: no levels, 1: hard levels), e.g. at export to the full
        strength of a teacher that posterizes (training settles at part strength, L1's hedge at uncertain borders)."""
        self.raw_strength.weight[style] = min(max(float(strength), 0.0), 1.0) / self.STRENGTH_RATE

    def parameters_for(
        self, style: torch.Tensor, dtype: torch.dtype, strength: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(step, offset, softness, strength), each (B, 1, 1, 1) in ``dtype``; ``strength`` (B,) replaces the
        learned one (see `forward`)."""
        step = self.log_step(style).float().exp()
        softness = torch.sigmoid(self.raw_softness(style).float()).clamp(0.02, 0.98)
        if strength is not None:
            strength = strength.float().clamp(0, 1)[:, None]  # (B, 1), as the tables' rows
        else:
            strength = self.STRENGTH_RATE * self.raw_strength(style).float()
            strength = straight_through_clamp(strength, 0, 1)
        values = (step, self.offset(style).float(), softness, strength)
        return tuple(v.to(dtype)[:, :, None, None] for v in values)

    def forward(self, x: torch.Tensor, style: torch.Tensor, strength: torch.Tensor | None = None) -> torch.Tensor:
        """``strength`` (B,) in [0, 1] replaces the learned strengths (0: off, 1: hard levels), e.g. for a user who
        wants flatter levels than the learned compromise between fidelity and flatness."""
        if self.space == "lab":
            return map_row_slices(
                self, x, lambda part: lab_to_rgb(self.quantize_lab(rgb_to_lab(part), style, strength))
            )
        params = self.parameters_for(style, x.dtype, strength)
        return map_row_slices(self, x, lambda part: self._quantize(part, *params))

    def quantize_lab(
        self, lab: torch.Tensor, style: torch.Tensor, strength: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The lab space's staircase on an L*a*b* image (B, 3, H, W) → L*a*b*: L* cut into levels, a* and b* times
        the style's chroma gain (the generator converts once around this and the median)."""
        step, offset, softness, strength = self.parameters_for(style, lab.dtype, strength)
        chroma = self.log_chroma(style).to(lab.dtype).exp()[:, :, None, None]  # (B, 1, 1, 1)
        lightness = lab[:, :1] / 50 - 1  # in [-1, 1]
        lightness = lightness + self._shift(lightness, step, offset, softness, strength)
        return torch.cat([(lightness + 1) * 50, lab[:, 1:] * chroma], dim=1)

    @staticmethod
    def _shift(signal, step, offset, softness, strength) -> torch.Tensor:
        # The staircase's value minus the signal, written with the position within a level (frac): offset + step ·
        # (level + 0.5 + ramp) - signal = step · (ramp + 0.5 - frac), since signal = offset + step · (level + frac).
        # The signal is a constant to autograd (straight-through: the input's gradient is the identity's).
        frac = ((signal.detach() - offset) / step).remainder(1)  # in [0, 1); its gradient that of the position
        ramp = ((frac - 1) / softness + 1).clamp(0, 1)
        return (strength * step) * (ramp * ramp * (3 - 2 * ramp) + 0.5 - frac)

    @staticmethod
    def _quantize(x, step, offset, softness, strength) -> torch.Tensor:
        # the luma without a graph, accumulated in place (a 1x1 convolution is 6x slower on CPU for one channel)
        with torch.no_grad():
            luma = (x[:, 0:1] * LUMA[0]).add_(x[:, 1:2], alpha=LUMA[1]).add_(x[:, 2:3], alpha=LUMA[2])  # (B, 1, H, W)
        return x + LevelQuantizer._shift(luma, step, offset, softness, strength)


def core(detail: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Coring of (B, 3, H, W) detail: ``detail · (1 - exp(-d² · scale))``, ``d`` its BT.601 luma, ``scale`` (B,)
    ``1 / 2τ²``: detail well below τ goes (texture, noise), detail well above it stays (edges)."""
    d = luma(detail)  # (B, 1, H, W)
    return detail * (1 - torch.exp(-d * d * scale[:, None, None, None]))


def median9(values: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise median of 9 tensors by Paeth's selection network (19 compare-exchanges, each a min and a max):
    no sort, exportable, and autograd passes each output element's gradient to the input it came from."""
    p = list(values)
    for i, j in ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
                 (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2)):  # fmt: skip
        p[i], p[j] = torch.minimum(p[i], p[j]), torch.maximum(p[i], p[j])
    return p[4]


class LumaDespeckle(nn.Module):
    r"""A median filter of the output's luma, as much as each style has: islands of a level a few pixels wide inside
    another (the speckles a quantized shadow or a textured wall leaves) take their surroundings' level; borders
    between larger areas stay where they are.

    The toon teacher runs a median on its quantized lightness and the ghibli teacher on its region colours; a median
    is no per-pixel map, so the tone head cannot draw it. The toon teacher's own stages run on the raw photo remove
    84 % of the photo→teacher error with their median and 47 % without it; trained with a 3×3 median, the bundled
    model removes 57.4 % of toon's error instead of 52.7 % (docs/experiments.md).

    ``output = clamp(x + strength · (median(y) - y), -1, 1)`` on every channel (a grey shift: the hue stays), ``y``
    the BT.601 luma, the median over the ``(2r + 1)²`` window (edges replicated, as OpenCV's ``medianBlur``). The
    strength, in [0, 1] per style, is 0 at construction (the identity) and learned.

    Args:
        num_styles (`int`): rows of the strength table.
        radius (`int`, *optional*, defaults to 1): window radius at full resolution (1: 3×3, a selection network that
            exports to ONNX; larger: `torch.median` of the window, not exportable).
        space (`str`, *optional*, defaults to `"luma"`): the median of the BT.601 luma (a grey shift), or with
            `"lab"` of CIE L* (a* and b* kept), as the toon teacher medians its L* levels (on its own, the torch
            path; in `GuidedFilterGenerator`'s CPU inference, with the posterizer, one fused kernel).
    """

    # at inference, slices of about this many pixels (whole rows, `radius` rows of halo)
    inference_pixels: int | None = 65536
    STRENGTH_RATE = LevelQuantizer.STRENGTH_RATE  # as the posterizer's: 0 → 1 in ~100 steps at lr 1e-3

    def __init__(self, num_styles: int, radius: int = 1, space: str = "luma"):
        super().__init__()
        check_positive_int("radius", radius)
        if space not in LEVEL_SPACES:
            raise ValueError(f"`space` must be one of {LEVEL_SPACES}, got {space!r}.")
        self.radius, self.space = radius, space
        self.raw_strength = nn.Embedding(num_styles, 1)
        nn.init.zeros_(self.raw_strength.weight)

    @torch.no_grad()
    def set_strength(self, style: int, strength: float) -> None:
        """Set ``style``'s strength, clamped to [0, 1] (1: the full median), e.g. at export to the strength of a
        teacher that medians its levels (training settles at part strength, as for the posterizer)."""
        self.raw_strength.weight[style] = min(max(float(strength), 0.0), 1.0) / self.STRENGTH_RATE

    def strength(self, style: torch.Tensor) -> torch.Tensor:
        """Each image's strength, (B,) float32 in [0, 1] (a straight-through clamp, so a style pushed outside can
        come back)."""
        strength = self.STRENGTH_RATE * self.raw_strength(style).float()[:, 0]
        return straight_through_clamp(strength, 0, 1)

    def forward(self, x: torch.Tensor, style: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``inplace``: the CPU kernel may write into ``x`` (a tensor the caller owns and no longer needs)."""
        strength = self.strength(style)
        kernel = self.radius == 1 and self.space == "luma" and x.dtype == torch.float32
        if kernel and cpu_kernels.usable(x, self.raw_strength.weight):
            return cpu_kernels.luma_median3(x, strength, LUMA, inplace=inplace)
        strength = strength.to(x.dtype)[:, None, None, None]
        return map_row_slices(self, x, lambda part: self._despeckle(part, strength), halo=self.radius)

    def _median(self, y: torch.Tensor) -> torch.Tensor:
        """The (2r+1)² median of (B, 1, H, W), edges replicated."""
        radius, (height, width) = self.radius, y.shape[-2:]
        padded = F.pad(y, (radius,) * 4, mode="replicate")
        size = 2 * radius + 1
        window = [padded[..., dy : dy + height, dx : dx + width] for dy in range(size) for dx in range(size)]
        return median9(window) if radius == 1 else torch.stack(window).median(dim=0).values

    def despeckle_lab(self, lab: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """The lab space's median on an L*a*b* image (B, 3, H, W) → L*a*b* (a* and b* kept)."""
        return self._despeckle_lab(lab, self.strength(style).to(lab.dtype)[:, None, None, None])

    def _despeckle_lab(self, lab: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        lightness = lab[:, :1]
        return torch.cat([lightness + strength * (self._median(lightness) - lightness), lab[:, 1:]], dim=1)

    def _despeckle(self, x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        if self.space == "lab":
            return lab_to_rgb(self._despeckle_lab(rgb_to_lab(x), strength))
        y = luma(x)  # (B, 1, H, W)
        return (x + strength * (self._median(y) - y)).clamp(-1, 1)


class InkLines(nn.Module):
    """Thin dark lines at full resolution: ``out · (1 − ink) + ink · colour``, ``ink = sigmoid(conv(photo) + gate)``.

    A 3×3 conv pair on the full-resolution photo finds where lines can be (its edges, 1 px wide); ``gate`` (B, 1, h, w),
    from the low-resolution network and upsampled, says where they belong (long object boundaries, not texture). The
    ink colour is learned per style. Starts with no ink (gate bias −6).
    """

    def __init__(self, hidden: int, num_styles: int):
        super().__init__()
        self.edges = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(hidden, 1, 1))
        self.colour = nn.Embedding(num_styles, 3)
        nn.init.constant_(self.colour.weight, -0.85)

    def forward(self, image: torch.Tensor, photo: torch.Tensor, gate: torch.Tensor, style: torch.Tensor):
        gate = F.interpolate(gate.to(image.dtype), size=image.shape[-2:], mode="bilinear", align_corners=False)
        ink = torch.sigmoid(self.edges(photo) + gate)  # (B, 1, H, W)
        colour = self.colour(style).to(image.dtype)[:, :, None, None]  # (B, 3, 1, 1)
        return torch.lerp(image, colour, ink)


class FiLMResBlock(nn.Module):
    """``x + conv(act(FiLM(conv(act(x)))))``: two 3×3 convs, a per-style scale and shift between them."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        hidden = self.conv1(F.leaky_relu(x, 0.2)) * (1 + scale) + shift  # scale, shift: (B, C, 1, 1)
        return x + self.conv2(F.leaky_relu(hidden, 0.2))


def is_work_side(side) -> bool:
    """Whether ``side`` is a long side a style can be drawn at: an integer (not a bool) in [`MIN_WORK_SIDE`,
    `MAX_WORK_SIDE`] pixels."""
    return isinstance(side, int) and not isinstance(side, bool) and MIN_WORK_SIDE <= side <= MAX_WORK_SIDE


def check_style_map(key: str, mapping, styles: Sequence[str], is_valid, wanted: str) -> dict:
    """A config's ``{style: value}`` entry ``key`` (None: ``{}``) as a dict, or a `ValueError` naming what is wrong:
    every name one of ``styles`` and every value passing ``is_valid`` (``wanted`` says what that is). It comes from a
    config.json, which may not be trusted."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict) or not all(name in styles and is_valid(value) for name, value in mapping.items()):
        raise ValueError(f"`{key}` must map some of the styles {list(styles)} to {wanted}, got {str(mapping)[:200]}.")
    return dict(mapping)


def check_work_sides(work_sides, styles: Sequence[str]) -> dict[str, int]:
    """`check_style_map` of ``work_sides``: long sides in [`MIN_WORK_SIDE`, `MAX_WORK_SIDE`] pixels."""
    wanted = f"a long side in [{MIN_WORK_SIDE}, {MAX_WORK_SIDE}] pixels"
    return check_style_map("work_sides", work_sides, styles, is_work_side, wanted)


def check_exposure_targets(exposure_targets, styles: Sequence[str]) -> dict[str, float]:
    """`check_style_map` of ``exposure_targets``: luminances in (0, 1] (`ghibligan.exposure`), as floats."""

    def is_target(target) -> bool:
        return not isinstance(target, bool) and isinstance(target, (int, float)) and 0 < target <= 1

    targets = check_style_map("exposure_targets", exposure_targets, styles, is_target, "a luminance in (0, 1]")
    return {name: float(target) for name, target in targets.items()}


def check_joint_upsampling(joint_upsampling, styles: Sequence[str]) -> dict[str, float]:
    """`check_style_map` of ``joint_upsampling``: range σs in [`MIN_SIGMA`, `MAX_SIGMA`] grey levels, as floats."""
    wanted = f"a range sigma in [{MIN_SIGMA:g}, {MAX_SIGMA:g}] grey levels"
    sigmas = check_style_map("joint_upsampling", joint_upsampling, styles, is_sigma, wanted)
    return {name: float(sigma) for name, sigma in sigmas.items()}


def check_contour_lines(contour_lines, styles: Sequence[str]) -> dict[str, dict]:
    """`check_style_map` of ``contour_lines``: each style's line settings (`ghibligan.contour_lines.ContourLines`'s
    fields), checked and completed with the defaults, as JSON-able mappings."""
    wanted = "a mapping of line settings (ghibligan.contour_lines.ContourLines)"
    settings = check_style_map("contour_lines", contour_lines, styles, lambda value: isinstance(value, dict), wanted)
    checked = {}
    for name, value in settings.items():
        try:
            checked[name] = ContourLines.from_dict(value).to_dict()
        except ValueError as error:
            raise ValueError(f"`contour_lines` of {name!r}: {error}") from None
    return checked


class GuidedFilterGenerator(nn.Module, GhibliganHubMixin):
    r"""Style-conditioned photo → cartoon generator: a network at ``1/scale_factor`` resolution, a trainable guided
    filter that brings its output to full resolution edge-aware by construction (Deep Guided Filter, Wu et al. 2018),
    and a per-pixel tone head at full resolution.

    The split mirrors how a cartoon is made: an edge-preserving *surface* (flat regions, texture gone, the photo's
    object boundaries kept), which needs spatial context but no fine detail — the low-resolution network and the
    guided filter — then a per-pixel *colour map* (flat luminance levels, saturation, grading), which needs no context
    but must be sharp at full resolution — the tone head.

    Args:
        styles (`list[str]`, *optional*, defaults to `["ghibli"]`): style names, in the order of the ``style``
            indices that `forward` takes.
        scale_factor (`int`, *optional*, defaults to 2): the network runs on the photo downsampled by this (area
            averaging); the guided filter brings its output back to full resolution.
        channels (`int`, *optional*, defaults to 8): width of the low-resolution network's first level; level ``i``
            has ``channels * 2**i``.
        num_levels (`int`, *optional*, defaults to 3): stride-2 levels of the low-resolution network.
        num_blocks (`int`, *optional*, defaults to 4): FiLM residual blocks at its coarsest level.
        radius (`int`, *optional*, defaults to 1): guided-filter window radius, at low resolution.
        eps (`float`, *optional*, defaults to 1e-3): initial guided-filter regularization (trainable), in squared
            [-1, 1] units.
        guide_channels (`int`, *optional*, defaults to 0): hidden width of a learned per-pixel guide map (Deep Guided
            Filter's); 0 guides with the photo itself.
        tone_channels (`int`, *optional*, defaults to 16): hidden width of the full-resolution tone head (two hidden
            layers, a per-style bias on each); 0 disables it.
        line_channels (`int`, *optional*, defaults to 0): hidden width of a full-resolution ink-line branch
            (`InkLines`), for styles with outlines; 0 disables it.
        upsampler (`str`, *optional*, defaults to `"guided_filter"`): how the low-resolution surface reaches full
            resolution: `"guided_filter"` (Deep Guided Filter's ``A · guide + b``) or `"joint_bilateral"`
            (`JointBilateralUpsampler`: a convex combination of surface values, so flat regions stay flat).
        range_sigma (`float`, *optional*, defaults to 0.1): initial range σ of the joint bilateral upsampler.
        flatten_iterations (`int`, *optional*, defaults to 0): passes of `RegionFlattener` (iterated bilateral
            filtering, one learned range σ per style) on the low-resolution surface; 0 disables it.
        flatten_radius (`int`, *optional*, defaults to 2): its window radius, at low resolution.
        flatten_dilations (`list[int]`, *optional*, defaults to `[]`): after those passes, one 3×3 pass of
            `RegionFlattener` per entry with taps that many low-resolution pixels apart (à-trous), a range σ per style
            of their own: the reach of regions as wide as the teacher's at 8 neighbours a pass (at most 8 entries, each
            in [1, 64]).
        levels (`int`, *optional*, defaults to 0): initial number of luma levels of a full-resolution
            `LevelQuantizer` after the tone head (each style learns its own step, offset, softness and strength; the
            identity until trained); 0 disables it.
        photo_detail (`bool`, *optional*, defaults to False): add back, with a learned per-style weight (0 at
            initialisation), the photo's detail the downsampling removed (``photo - bilinear(low)``), for styles that
            keep some texture (painterly) while others stay flat.
        detail_coring (`float`, *optional*, defaults to 0): with `photo_detail`, keep only the photo's *strong*
            detail: each pixel's detail times ``1 - exp(-d² / 2τ²)``, ``d`` its luma, ``τ`` learned per style from
            this initial threshold (in [-1, 1] units; 0.05 is about 6 grey levels). Texture and noise (small ``d``)
            go, edges (large ``d``) stay: a classic coring. 0 disables it.
        photo_smoothing (`int`, *optional*, defaults to 0): with `photo_detail`, the detail added back is the photo
            smoothed edge-aware at full resolution (`PhotoSmoother`: a fast guided filter of this radius at low
            resolution, ε learned per style) minus the low-resolution photo upsampled as the surface is, and its
            weight starts at 1: the model starts as that smoothing of the photo, and the network draws its changes on
            top of a full-resolution, texture-free photo instead of replacing it by a half-resolution one. 0: the raw
            detail ``photo - bilinear(low)``.
        smoothing_eps (`float`, *optional*, defaults to 1e-2): the initial ε of `photo_smoothing` (learned per style
            and channel), in squared [-1, 1] units: texture whose local variance is well below it is flattened.
        smoothing_noise (`float`, *optional*, defaults to 0): with `photo_smoothing`, raise each photo's ε by this
            many times its estimated noise variance (`noise_variance`, the initial gain; learned per style), so a
            noisy photo's grain is smoothed away as the teachers do while a clean photo's fine texture stays. 0
            disables it.
        smoothing_reference_side (`int`, *optional*, defaults to 0): with `photo_smoothing`, the long side (pixels)
            of the photos its ε was learned at: on a larger photo ε grows in proportion to its long side, up to
            `MAX_SMOOTHING_SCALE` times (the teachers' windows grow with the photo; the model's are fixed in pixels,
            so at a fixed ε a larger photo keeps more of its texture than the teachers do). A tile of a larger photo
            is scaled by the photo's size where `forward` is given its ``photo_side`` (`Cartoonizer` does), by its own
            otherwise (an exported graph). 0 disables it.
        despeckle (`int`, *optional*, defaults to 0): window radius of a full-resolution median of the output's luma
            after the posterizer (`LumaDespeckle`, a learned strength per style, 0 at initialisation), against
            one-level islands a few pixels wide; 0 disables it.
        surface_gate (`bool`, *optional*, defaults to False): learn, per style, how much of the network's
            (flattened) low-resolution surface replaces the photo's own: ``photo_low + g · (surface_low - photo_low)``,
            ``g`` in [0, 2] starting at 1 (the model without the gate). The network and the flattener are shared by
            all styles, and the ones whose teacher is a per-pixel map of the smoothed photo (toon, painterly) lose
            to what the network draws for the others (ghibli's plateaus): with the gate they can keep the photo.
        level_space (`str`, *optional*, defaults to `"luma"`): what the posterizer cuts its levels in and the median
            sorts: `"luma"` (BT.601) or `"lab"` (CIE L*, as the toon teachers cut theirs; the fused CPU kernels convert
            with polynomials, ~1.1x the luma model's time).
        work_sides (`dict[str, int]`, *optional*): the long side, in pixels, at which a style is drawn, for styles
            whose teacher draws at a fixed resolution: `Cartoonizer` draws a larger photo in that style at this side and
            upsamples the cartoon (bilinear) to the photo's size, as the `ghibli` teacher paints its regions at 512 px
            and upsamples them. A style not named is drawn at the photo's own size. Metadata for the pipeline, like
            diffusers' ``sample_size``: `forward` does not read it.
        exposure_targets (`dict[str, float]`, *optional*): for styles whose teacher normalizes a dark photo's exposure
            (`ghibligan.exposure`: the `ghibli` teacher's ``exposure_target``), the same 99th-percentile luminance
            target: `Cartoonizer` brightens a darker photo to it (at most 4x in linear light, highlights rolled off),
            draws it and darkens the cartoon back. Metadata for the pipeline, like ``work_sides``.
        contour_lines (`dict[str, dict]`, *optional*): for styles whose teacher inks the edges of the smoothed photo
            at its own size (the toon teacher), its line settings (`ghibligan.contour_lines.ContourLines`' fields):
            `Cartoonizer` draws those lines itself, with the teacher's algorithm, on the cartoon at the photo's size,
            after any upsampling from a work side. Metadata for the pipeline, like ``work_sides``.
        joint_upsampling (`dict[str, float]`, *optional*): for styles drawn at a work side whose teacher draws at
            the photo's own size (the toon teacher's crisp levels), a range σ in grey levels: `Cartoonizer` brings
            the cartoon to the photo's size by joint bilateral upsampling guided by the photo
            (`ghibligan.upsampling`) instead of bilinear, so its borders stay as sharp as the photo's edges. Metadata
            for the pipeline, like ``work_sides``.

    At initialisation the network outputs its input and the guide map and tone head are the identity, so the model is
    a guided filter of the photo by itself: an edge-preserving smoothing, close to the identity.

    Example:
        ```py
        >>> import torch
        >>> from ghibligan.models.guided import GuidedFilterGenerator
        >>> model = GuidedFilterGenerator(styles=["toon", "painterly"]).eval()
        >>> model(torch.zeros(2, 3, 300, 457), style=torch.tensor([0, 1])).shape
        torch.Size([2, 3, 300, 457])
        ```
    """

    # `surface_gate` moves this many times faster than the other parameters under Adam, as the posterizer's strength
    SURFACE_GATE_RATE = LevelQuantizer.STRENGTH_RATE

    def __init__(
        self,
        styles: Sequence[str] = ("ghibli",),
        scale_factor: int = 2,
        channels: int = 8,
        num_levels: int = 3,
        num_blocks: int = 4,
        radius: int = 1,
        eps: float = 1e-3,
        guide_channels: int = 0,
        tone_channels: int = 16,
        line_channels: int = 0,
        upsampler: str = "guided_filter",
        range_sigma: float = 0.1,
        flatten_iterations: int = 0,
        flatten_radius: int = 2,
        flatten_dilations: Sequence[int] = (),
        photo_detail: bool = False,
        detail_coring: float = 0.0,
        photo_smoothing: int = 0,
        smoothing_eps: float = 1e-2,
        smoothing_noise: float = 0.0,
        smoothing_reference_side: int = 0,
        levels: int = 0,
        despeckle: int = 0,
        level_space: str = "luma",
        surface_gate: bool = False,
        work_sides: dict[str, int] | None = None,
        exposure_targets: dict[str, float] | None = None,
        contour_lines: dict[str, dict] | None = None,
        joint_upsampling: dict[str, float] | None = None,
    ):
        super().__init__()
        if isinstance(styles, str) or not styles or not all(isinstance(s, str) and s for s in styles):
            raise ValueError(f"`styles` must be a non-empty list of style names, got {styles!r}.")
        if len(set(styles)) != len(styles):
            raise ValueError(f"`styles` must not repeat a name, got {list(styles)!r}.")
        check_positive_int("scale_factor", scale_factor)
        check_positive_int("channels", channels)
        check_positive_int("num_levels", num_levels)
        check_positive_int("num_blocks", num_blocks)
        check_positive_int("radius", radius)
        check_positive_int("guide_channels", guide_channels, minimum=0)
        check_positive_int("tone_channels", tone_channels, minimum=0)
        check_positive_int("line_channels", line_channels, minimum=0)
        check_positive_int("flatten_iterations", flatten_iterations, minimum=0)
        check_positive_int("flatten_radius", flatten_radius)
        if (
            isinstance(flatten_dilations, (str, bytes))
            or not isinstance(flatten_dilations, Sequence)
            or len(flatten_dilations) > MAX_FLATTEN_DILATIONS
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_FLATTEN_DILATION
                for d in flatten_dilations
            )
        ):
            raise ValueError(
                f"`flatten_dilations` must be a list of at most {MAX_FLATTEN_DILATIONS} integers in "
                f"[1, {MAX_FLATTEN_DILATION}], got {flatten_dilations!r}."
            )
        check_positive_int("levels", levels, minimum=0)
        check_positive_int("despeckle", despeckle, minimum=0)
        check_positive_int("photo_smoothing", photo_smoothing, minimum=0)
        for name, value in (("eps", eps), ("range_sigma", range_sigma), ("smoothing_eps", smoothing_eps)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"`upsampler` must be one of {UPSAMPLERS}, got {upsampler!r}.")
        if level_space not in LEVEL_SPACES:
            raise ValueError(f"`level_space` must be one of {LEVEL_SPACES}, got {level_space!r}.")
        self.styles = list(styles)
        self.work_sides = check_work_sides(work_sides, self.styles)
        self.exposure_targets = check_exposure_targets(exposure_targets, self.styles)
        self.contour_lines = check_contour_lines(contour_lines, self.styles)
        self.joint_upsampling = check_joint_upsampling(joint_upsampling, self.styles)
        self.scale_factor = scale_factor
        widths = [channels * 2**level for level in range(num_levels + 1)]

        # Low-resolution network: conv_in → stride-2 levels → FiLM residual blocks → ×2 levels (+ skips) → conv_out
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1)
        self.down_blocks = nn.ModuleList(
            nn.Conv2d(widths[level], widths[level + 1], 3, stride=2, padding=1) for level in range(num_levels)
        )
        self.mid_blocks = nn.ModuleList(FiLMResBlock(widths[-1]) for _ in range(num_blocks))
        self.style_film = nn.Embedding(len(self.styles), num_blocks * 2 * widths[-1])  # (scale, shift) per block
        nn.init.zeros_(self.style_film.weight)
        self.up_blocks = nn.ModuleList(
            nn.Conv2d(widths[level + 1], widths[level], 3, padding=1) for level in reversed(range(num_levels))
        )
        self.conv_out = nn.Conv2d(channels, 3 + bool(line_channels), 3, padding=1)  # surface (+ line gate)
        nn.init.zeros_(self.conv_out.weight)  # start as the identity: surface_low = low (and no ink)
        nn.init.zeros_(self.conv_out.bias)
        if line_channels:
            nn.init.constant_(self.conv_out.bias[3:], -6.0)

        self.flattener = (
            RegionFlattener(len(self.styles), flatten_iterations, flatten_radius, dilations=flatten_dilations)
            if flatten_iterations or flatten_dilations
            else None
        )

        # Full-resolution output stage
        self.guide_map = StyleColorMap(3, guide_channels, len(self.styles), num_layers=1) if guide_channels else None
        if upsampler == "guided_filter":
            self.guided_filter = GuidedFilter(3, radius=radius, eps=eps)
        else:
            self.joint_bilateral = JointBilateralUpsampler(scale_factor, sigma=range_sigma)
        self.tone_head = StyleColorMap(3, tone_channels, len(self.styles)) if tone_channels else None
        self.level_space = level_space
        self.level_quantizer = LevelQuantizer(len(self.styles), levels, space=level_space) if levels else None
        self.despeckle = LumaDespeckle(len(self.styles), despeckle, space=level_space) if despeckle else None
        self.ink_lines = InkLines(line_channels, len(self.styles)) if line_channels else None
        if not isinstance(photo_detail, bool):
            raise ValueError(f"`photo_detail` must be True or False, got {photo_detail!r}.")
        self.style_detail = nn.Embedding(len(self.styles), 1) if photo_detail else None
        if self.style_detail is not None:
            nn.init.zeros_(self.style_detail.weight)
        coring_ok = isinstance(detail_coring, (int, float)) and not isinstance(detail_coring, bool)
        if not (coring_ok and 0 <= detail_coring < 1) or (detail_coring and not photo_detail):
            raise ValueError(
                f"`detail_coring` must be a threshold in [0, 1) (> 0 only with `photo_detail`), got {detail_coring!r}."
            )
        self.detail_coring = nn.Embedding(len(self.styles), 1) if detail_coring else None  # log τ per style
        if self.detail_coring is not None:
            nn.init.constant_(self.detail_coring.weight, math.log(detail_coring))
        if photo_smoothing and (not photo_detail or detail_coring):
            raise ValueError(
                "`photo_smoothing` needs `photo_detail` (and replaces `detail_coring`: it smooths by itself)."
            )
        noise_ok = isinstance(smoothing_noise, (int, float)) and not isinstance(smoothing_noise, bool)
        if not (noise_ok and 0 <= smoothing_noise <= MAX_SMOOTHING_NOISE) or (smoothing_noise and not photo_smoothing):
            raise ValueError(
                f"`smoothing_noise` must be a gain in [0, {MAX_SMOOTHING_NOISE:g}] (> 0 only with `photo_smoothing`), "
                f"got {smoothing_noise!r}."
            )
        off = type(smoothing_reference_side) is int and smoothing_reference_side == 0  # (not a bool)
        if not (off or (is_work_side(smoothing_reference_side) and photo_smoothing)):
            raise ValueError(
                f"`smoothing_reference_side` must be 0 or, with `photo_smoothing`, a long side in [{MIN_WORK_SIDE}, "
                f"{MAX_WORK_SIDE}] pixels, got {smoothing_reference_side!r}."
            )
        self.photo_smoother = None
        if photo_smoothing:
            reference = smoothing_reference_side / scale_factor  # in the low-resolution photo's pixels
            self.photo_smoother = PhotoSmoother(
                len(self.styles), photo_smoothing, smoothing_eps, smoothing_noise, reference
            )
        if self.photo_smoother is not None:
            nn.init.ones_(self.style_detail.weight)  # start as the smoothed photo
        if not isinstance(surface_gate, bool):
            raise ValueError(f"`surface_gate` must be True or False, got {surface_gate!r}.")
        self.surface_gate = nn.Embedding(len(self.styles), 1) if surface_gate else None  # g / SURFACE_GATE_RATE
        if self.surface_gate is not None:
            nn.init.constant_(self.surface_gate.weight, 1 / self.SURFACE_GATE_RATE)

    def surface_share(self, style: torch.Tensor) -> torch.Tensor:
        """Each image's `surface_gate` ``g`` (B,) float32 in [0, 2] (a straight-through clamp, so a style pushed
        outside can come back); ones without a gate."""
        if self.surface_gate is None:
            return torch.ones(style.shape, device=style.device)
        share = self.SURFACE_GATE_RATE * self.surface_gate(style).float()[:, 0]
        return straight_through_clamp(share, 0, 2)

    @property
    def surface_upsampler(self) -> nn.Module:
        """The module that brings the low-resolution surface to full resolution, called as ``(guide_low, source_low,
        guide)``: the `GuidedFilter` or `JointBilateralUpsampler` the `upsampler` argument names (either is linear in
        its source)."""
        return self.guided_filter if hasattr(self, "guided_filter") else self.joint_bilateral

    @property
    def size_multiple(self) -> int:
        """Any size works (the low-resolution network pads and crops by itself): 1."""
        return 1

    def style_indices(self, style: str | Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Style name(s) → the LongTensor (B,) that `forward` takes; one name is repeated ``batch_size`` times."""
        names = [style] * (batch_size or 1) if isinstance(style, str) else list(style)
        unknown = [name for name in names if name not in self.styles]
        if unknown:
            raise ValueError(f"Unknown style {unknown[0]!r}: this model has styles {self.styles}.")
        return torch.tensor([self.styles.index(name) for name in names], dtype=torch.long)

    def _check_style(self, style: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
        if style is None:
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        if not isinstance(style, torch.Tensor) or style.dtype != torch.long or style.shape != (batch_size,):
            raise ValueError(
                f"`style` must be a LongTensor of shape ({batch_size},) holding indices into {self.styles}, got "
                f"{style!r}. Use `model.style_indices(names)` to convert names."
            )
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()  # no data-dependent checks in export
        if not tracing and style.numel() and (int(style.min()) < 0 or int(style.max()) >= len(self.styles)):
            raise ValueError(
                f"`style` indices must be in [0, {len(self.styles) - 1}] (styles {self.styles}), got {style.tolist()}."
            )
        return style.to(device)

    def _low_res_net(self, low: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = low.shape[-2:]
        padded, (top, left) = pad_to_multiple_indexed(low, 2 ** len(self.down_blocks))
        hidden = self.conv_in(padded)  # (B, c, h', w'), h' and w' multiples of 2**num_levels
        skips = []
        for block in self.down_blocks:
            skips.append(hidden)
            hidden = block(F.leaky_relu(hidden, 0.2))  # (B, 2c, h/2, w/2), ...
        film = self.style_film(style).to(hidden.dtype)  # (B, blocks * 2 * C)
        for block, block_film in zip(self.mid_blocks, film.chunk(len(self.mid_blocks), dim=1), strict=True):
            scale, shift = block_film.chunk(2, dim=1)  # (B, C) each
            hidden = block(hidden, scale[:, :, None, None], shift[:, :, None, None])
        for block, skip in zip(self.up_blocks, reversed(skips), strict=True):
            # ×2 nearest, written as the skip's size so torch.export needs no proof that the sizes match
            hidden = F.interpolate(F.leaky_relu(hidden, 0.2), size=skip.shape[-2:], mode="nearest")
            hidden = block(hidden) + skip  # (B, C/2, 2h', 2w')
        out = self.conv_out(F.leaky_relu(hidden, 0.2))[..., top : top + height, left : left + width]  # (B, 3|4, h, w)
        return out[:, :3] + low, out[:, 3:]  # surface (B, 3, h, w), line gate (B, 0 or 1, h, w)

    def forward(
        self,
        sample: torch.Tensor,
        style: torch.Tensor | None = None,
        posterize: torch.Tensor | None = None,
        photo_side: int | None = None,
    ) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] and style indices (B,) (None: style 0) → (B, 3, H, W) in [-1, 1].

        ``posterize`` (B,) in [0, 1] overrides the `LevelQuantizer`'s learned strength of each image's style (0: no
        levels, 1: hard levels; None: as learned); only for a model built with ``levels``. ``photo_side``: the long
        side of the whole photo where ``sample`` is a tile of it, for what depends on the photo's size (the photo
        smoothing's `smoothing_reference_side`); None: ``sample``'s own."""
        batch, _, height, width = sample.shape
        style = self._check_style(style, batch, sample.device)
        if posterize is not None and self.level_quantizer is None:
            raise ValueError("`posterize` needs a model with a posterizer (built with `levels` > 0).")

        # The per-pixel stages are elementwise or tiny 1x1 convs: on CPU they run in float32 whatever the model's
        # dtype, as bf16 is slower there for such work (the bundled model in bf16 at 512²: 53 → 35 ms); on the meta
        # device (memory estimates, `ghibligan.models.limits`) as on CPU: the larger of the two. The network runs in
        # its weights' dtype, whatever the photo's (a pipeline may hand a bf16 model a float32 photo on CPU).
        compute = torch.float32 if sample.device.type in ("cpu", "meta") else sample.dtype
        net_dtype = self.conv_in.weight.dtype
        photo = sample.to(compute)  # (no copy in float32 or off CPU)
        fused = self._runs_cpu_kernels(photo)  # on CPU without autograd: numba kernels for the per-pixel stages
        # the whole photo's long side at low resolution where `sample` is a tile of it (ceil, as `low_size` below)
        low_side = None if photo_side is None else -(-photo_side // self.scale_factor)

        # 1. downsample (area averaging: pixel i covers [i·H/h, (i+1)·H/h), matching bilinear upsampling below)
        # ceil(H / s), (H + s - 1) // s: the exported graph divides integers by truncation, so no negative operands
        low_size = (
            (height + self.scale_factor - 1) // self.scale_factor,
            (width + self.scale_factor - 1) // self.scale_factor,
        )
        if torch.compiler.is_exporting():  # adaptive pooling's bins depend on the size: no exportable aten op
            low = area_downsample_indexed(sample, low_size, span=self.scale_factor + 1)  # (B, 3, h, w)
        elif fused:  # the same average, ~3x faster on a 3-channel image, float32
            low = cpu_kernels.area_downsample(photo, low_size)
        else:
            low = F.interpolate(sample, size=low_size, mode="area")  # (B, 3, h, w)
        photo_low = low.to(compute)
        if fused or low.dtype != net_dtype:  # (the kernel's output is planar: oneDNN's convolutions want NHWC)
            low = low.to(net_dtype, memory_format=torch.channels_last)

        # 2. the cartoon's surface at low resolution
        surface_low, line_gate = self._low_res_net(low, style)  # (B, 3, h, w), (B, 0 or 1, h, w)
        if self.flattener is not None:  # plateaus: flat regions, sharp borders
            surface_low = self.flattener(surface_low.to(compute), style)
        if self.surface_gate is not None:  # as much of the network's surface as the style wants, the photo's elsewhere
            share = self.surface_share(style).to(compute)[:, None, None, None]
            surface_low = torch.lerp(photo_low, surface_low.to(compute), share)  # one pass: photo + g·(surface − photo)
        if fused:  # steps 3-5 below in one pass over the image
            surface = self._output_stage_kernel(photo, photo_low, surface_low, style, posterize, low_side)
            if self.level_space == "lab":  # L*a*b* out of the kernel: the median of L*, then RGB, in place
                despeckle = torch.zeros(batch) if self.despeckle is None else self.despeckle.strength(style)
                surface = cpu_kernels.lab_finish(surface, despeckle)
            elif self.despeckle is not None:
                surface = self.despeckle(surface, style, inplace=True)  # the kernel's output, ours to overwrite
            return self._ink(surface.to(sample.dtype), sample, line_gate, style)

        # 3. the guide, at both resolutions (the same per-pixel map)
        guide, guide_low = photo, photo_low
        if self.guide_map is not None:
            guide, guide_low = self.guide_map(photo, style), self.guide_map(photo_low, style)  # (B, 3, H, W), (h, w)

        # 4. to full resolution, edge-aware: local linear models of the guide fitted at low resolution (guided
        # filter), or each pixel a mix of the low-resolution samples around it that look like it (joint bilateral)
        upsample = self.surface_upsampler
        if self.photo_smoother is not None:
            # up(surface_low) + w · (smooth(photo) - up(photo_low)) in one upsampling: it is linear in its source
            weight = self.style_detail(style).to(compute)[:, :, None, None]
            change_low = surface_low.to(compute) - weight * photo_low
            surface = upsample(guide_low, change_low, guide)
            smoothed = self.photo_smoother(photo_low, photo, style, low_side)
            surface = torch.addcmul(surface, weight, smoothed).clamp(-1, 1)
        else:
            surface = upsample(guide_low, surface_low.to(compute), guide).clamp(-1, 1)

        # the photo's own fine detail, as much as the style keeps
        if self.style_detail is not None and self.photo_smoother is None:
            detail = photo - F.interpolate(photo_low, size=(height, width), mode="bilinear", align_corners=False)
            if self.detail_coring is not None:  # texture and noise out, edges kept
                detail = core(detail, self.coring_scale(style).to(detail.dtype))
            surface = torch.addcmul(surface, self.style_detail(style).to(detail.dtype)[:, :, None, None], detail)

        # 5. per-pixel colour map at full resolution (levels, grading)
        if self.tone_head is not None:
            surface = self.tone_head(surface, style).clamp(-1, 1)
        if self.level_space == "lab" and (self.level_quantizer is not None or self.despeckle is not None):
            surface = self._lab_stages(surface, style, posterize)
        else:
            if self.level_quantizer is not None:  # flat levels of luma with sharp borders, as much as the style has
                surface = self.level_quantizer(surface, style, posterize).clamp(-1, 1)
            if self.despeckle is not None:  # no one-level islands a few pixels wide
                surface = self.despeckle(surface, style)

        return self._ink(surface.to(sample.dtype), sample, line_gate, style)

    def _ink(self, surface: torch.Tensor, sample: torch.Tensor, line_gate: torch.Tensor, style: torch.Tensor):
        """6. ink lines, where the model draws them."""
        if self.ink_lines is None:
            return surface
        return self.ink_lines(surface, sample.to(self.conv_in.weight.dtype), line_gate, style)

    def _lab_stages(self, surface: torch.Tensor, style: torch.Tensor, posterize: torch.Tensor | None) -> torch.Tensor:
        """The posterizer and the median in CIE L*a*b*, converted once around both; at inference in slices of rows
        (a halo of the median's reach) as each stage runs alone, so a large image's peak memory stays small."""

        def stages(part: torch.Tensor) -> torch.Tensor:
            lab = rgb_to_lab(part)
            if self.level_quantizer is not None:
                lab = self.level_quantizer.quantize_lab(lab, style, posterize)
            if self.despeckle is not None:
                lab = self.despeckle.despeckle_lab(lab, style)
            return lab_to_rgb(lab)

        halo = 0 if self.despeckle is None else self.despeckle.radius
        return map_row_slices(self.despeckle or self.level_quantizer, surface, stages, halo=halo)

    def coring_scale(self, style: torch.Tensor) -> torch.Tensor:
        """``1 / 2τ²`` (B,) of `detail_coring` for each image's style, float32."""
        return 0.5 * torch.exp(-2 * self.detail_coring(style).float()[:, 0])

    def _runs_cpu_kernels(self, photo: torch.Tensor) -> bool:
        """Whether the downsampling and steps 3-5 can run as `cpu_kernels`' kernels: the joint bilateral upsampler
        guided by the photo itself, a tone head of two hidden layers (or none), float32 on the CPU, nothing for
        autograd to record."""
        return (
            hasattr(self, "joint_bilateral")
            and self.guide_map is None
            and (self.tone_head is None or len(self.tone_head.hidden_layers) == 2)
            and (self.level_space == "luma" or self.despeckle is None or self.despeckle.radius == 1)
            and photo.dtype == torch.float32
            and cpu_kernels.usable(photo, *self.parameters())
        )

    def _output_stage_kernel(
        self,
        photo: torch.Tensor,
        photo_low: torch.Tensor,
        surface_low: torch.Tensor,
        style: torch.Tensor,
        posterize: torch.Tensor | None,
        low_side: int | None = None,
    ) -> torch.Tensor:
        """Steps 3-5 of `forward` (joint bilateral upsampling, detail, tone head, posterizer) by the fused kernel;
        ``low_side`` as `PhotoSmoother.size_scale`'s."""
        detail = None if self.style_detail is None else self.style_detail(style).float()[:, 0]  # (B,)
        smoothing = None
        if self.photo_smoother is not None:  # up(surface_low - w · photo_low) + w · smooth(photo), as in `forward`
            surface_low = surface_low.float() - detail[:, None, None, None] * photo_low
            smoothing = self.photo_smoother.fused_coefficients(photo_low, style, low_side)
        coring = None if self.detail_coring is None else self.coring_scale(style)
        tone = None if self.tone_head is None else self.tone_head.folded_weights(style)
        levels = chroma = None
        if self.level_quantizer is not None:
            levels = tuple(v.flatten() for v in self.level_quantizer.parameters_for(style, torch.float32, posterize))
        if self.level_space == "lab":  # (a lab model without a posterizer: levels of strength 0, gain 1)
            quantizer = self.level_quantizer
            chroma = torch.ones(len(style)) if quantizer is None else quantizer.log_chroma(style).float().exp()
        taps = [_bilinear_taps(phase, self.scale_factor) for phase in range(self.scale_factor)]
        sigma = self.joint_bilateral.sigma
        return cpu_kernels.output_stage(
            photo,
            photo_low,
            surface_low.float(),
            taps,
            sigma,
            detail,
            tone,
            levels,
            LUMA,
            lab_chroma=chroma,
            coring=coring,
            smoothing=smoothing,
        )
