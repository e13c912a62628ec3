"""Fused CPU inference kernels for `GuidedFilterGenerator`'s per-pixel stages, compiled by numba.

The guided generator spends most of its CPU time not in its network but in per-pixel stages written as chains of
torch ops: the area downsampling of the photo, the `RegionFlattener` (24 neighbours a pixel, 3 passes), the
`PhotoSmoother`'s guided-filter models (box filters at low resolution), the
full-resolution output stage (`JointBilateralUpsampler`, the photo's detail, the `StyleColorMap` tone head and the
`LevelQuantizer`) and the 3×3 median of `LumaDespeckle` (in place, a selection network of min and max). Each op
reads and writes the whole image, so the chain is bound by memory traffic and op overhead, not arithmetic. Here each
stage is one loop nest that keeps a row's values in registers and cache: the same arithmetic (float32, as the torch
path computes on CPU), a fraction of the traffic, both cores through numba's ``prange`` over rows.

Why numba rather than torch: the torch path stays, for training (these kernels have no backward), accelerators, ONNX
export and machines without numba; ``torch.compile`` was measured for the flattener (docs/experiments.md) and compiles
for 60 s per image size, which a Space that sees every size cannot afford. numba compiles each kernel once (a few
seconds, cached on disk) for every size.

The one departure from the torch path is ``exp``: LLVM vectorizes no call to ``exp``, so `_exp_neg` evaluates
``exp(-t)`` as ``(Taylor₈(t/32))³²``, pure arithmetic that vectorizes, with a relative error below 2e-5 on the
range that matters (``t ≤ 24``; beyond it every weight here is below 4e-11 of its pixel's own, and is taken as
``exp(-24)``); the flattener's weights, which are always summed beside a centre weight of 1, take a cheaper
``(Taylor₆(t/16))¹⁶`` (`_exp_neg_flatten`: absolute error below 1e-6, 15 % off the flattener's time); likewise the
`pow`s of a lab-space model's colour conversions are polynomials (`_chebyshev_horner`).
The bundled model's output through these kernels is within 1/255 of the torch path's
(``tests/test_cpu_kernels.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Sequence

import numpy as np
import torch

try:
    import numba
    from numba import njit, prange
except ImportError:  # the torch path serves; `available()` says so
    numba = None

# One kernel call at a time: numba's fallback threading layer (workqueue) aborts on concurrent parallel calls, as a
# Space's worker threads would make; the kernels use every core anyway.
_LOCK = threading.Lock()
_CHUNK = 128  # pixels per chunk of the tone head: its two (hidden, _CHUNK) float32 buffers stay in L1
# float32 constants (a Python float would promote the kernels' arithmetic to float64)
_ZERO, _ONE, _TWO, _THREE = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(3.0)
_HALF, _SLOPE, _FLOOR = np.float32(0.5), np.float32(0.2), np.float32(1e-6)  # LeakyReLU slope, JBU weight floor


# CIE L*a*b* (`ghibligan.models.color`) without `pow`, which LLVM does not vectorize: the sRGB curves and the cube
# root are polynomials of degree 7 (Chebyshev interpolants, evaluated by Horner's rule), the two with an infinite slope
# at 0 in the fourth root of their argument (two `sqrt`s, which vectorize), where they are smooth. Each is within 3e-6
# of the exact curve (tests/test_cpu_kernels.py); twice as fast as linearly interpolated tables, which need gathers.
def _chebyshev_horner(g, low: float, high: float, degree: int = 7) -> np.ndarray:
    """``g`` on [low, high] as float32 ``(centre, 1 / half-width, c_n, ..., c_0)`` for `_polynomial`: ``g(q) ≈
    Σ c_k u^k``, ``u = (q - centre) / half-width`` in [-1, 1]."""
    from numpy.polynomial import Chebyshev, Polynomial

    interpolant = Chebyshev.interpolate(g, degree, domain=[low, high])
    monomial = interpolant.convert(kind=Polynomial, domain=[low, high], window=[-1, 1])
    return np.array([(low + high) / 2, 2 / (high - low), *monomial.coef[::-1]], np.float32)


def _color_constants() -> tuple[np.ndarray, ...]:
    from .color import _EPSILON, _RGB_TO_XYZ, _WHITE, _XYZ_TO_RGB

    decode = _chebyshev_horner(lambda s: ((s + 0.055) / 1.055) ** 2.4, 0.04045, 1.0)  # sRGB → linear, in s
    encode = _chebyshev_horner(lambda q: 1.055 * q ** (4 / 2.4) - 0.055, 0.0031308**0.25, 1.0)  # in q = linear^¼
    cube_root = _chebyshev_horner(lambda q: q ** (4 / 3), _EPSILON**0.25, _CIE_F_TOP**0.25)  # in q = t^¼
    to_xyz = np.array(_RGB_TO_XYZ) / np.array(_WHITE)[:, None]
    to_rgb = np.array(_XYZ_TO_RGB) * np.array(_WHITE)[None, :]
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in (decode, encode, cube_root, to_xyz, to_rgb))


_CIE_F_TOP = 1.1  # XYZ / white stays below ~1.09 for RGB in [0, 1]
_SRGB_DECODE, _SRGB_ENCODE, _CUBE_ROOT, _RGB_TO_XYZ_W, _XYZ_W_TO_RGB = _color_constants()

# GHIBLIGAN_CPU_KERNELS=0 runs the torch path everywhere (e.g. to rule these kernels out when something looks wrong)
_enabled = os.environ.get("GHIBLIGAN_CPU_KERNELS", "1") != "0"


def available() -> bool:
    """Whether numba is installed (``pip install numba``); without it the torch path runs, slower on CPU."""
    return numba is not None


def enabled() -> bool:
    """Whether the kernels may run at all: numba installed, and neither ``GHIBLIGAN_CPU_KERNELS=0`` nor `disabled`."""
    return _enabled and numba is not None


def usable(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether a stage may run its kernel on ``x``: numba installed and enabled, ``x`` on the CPU, nothing for autograd
    to record (the kernels have no backward: grad mode off, or neither ``x`` nor ``others``, the stage's other inputs
    and parameters, requiring grad), and no export, trace or compile (they are opaque to all three)."""
    return (
        _enabled
        and numba is not None
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in others)))
        and not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting())
    )


@contextlib.contextmanager
def disabled():
    """Run the torch path inside this block, process-wide (A/B benchmarks, tests of the kernels against it)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


if numba is not None:

    @njit(fastmath=True, inline="always", cache=True)
    def _clamp(v):
        """``v`` clamped to [-1, 1]."""
        return min(max(v, -_ONE), _ONE)

    @njit(fastmath=True, inline="always", cache=True)
    def _exp_neg(t):
        """``exp(-t)`` for ``t ≥ 0`` in float32 arithmetic that vectorizes (see the module docstring)."""
        u = min(t, np.float32(24.0)) * np.float32(1.0 / 32.0)
        p = np.float32(1.0 / 40320.0)
        p = np.float32(1.0 / 5040.0) - u * p
        p = np.float32(1.0 / 720.0) - u * p
        p = np.float32(1.0 / 120.0) - u * p
        p = np.float32(1.0 / 24.0) - u * p
        p = np.float32(1.0 / 6.0) - u * p
        p = np.float32(0.5) - u * p
        p = _ONE - u * p
        p = _ONE - u * p  # exp(-u), |error| < 1e-8 for u ≤ 0.75
        p = p * p
        p = p * p
        p = p * p
        p = p * p
        return p * p

    @njit(fastmath=True, inline="always", cache=True)
    def _exp_neg_flatten(t):
        """`_exp_neg` for the flattener's weights, three multiply-adds cheaper: ``(Taylor₆(t/16))¹⁶`` with ``t`` capped
        at 16. Every flattening weight is summed beside the centre's weight of 1, so what matters is the absolute
        error: < 1e-6 for every ``t ≥ 0`` (``exp(-16)`` is 1.1e-7)."""
        u = min(t, np.float32(16.0)) * np.float32(1.0 / 16.0)
        p = np.float32(1.0 / 720.0)
        p = np.float32(1.0 / 120.0) - u * p
        p = np.float32(1.0 / 24.0) - u * p
        p = np.float32(1.0 / 6.0) - u * p
        p = np.float32(0.5) - u * p
        p = _ONE - u * p
        p = _ONE - u * p
        p = p * p
        p = p * p
        p = p * p
        return p * p

    @njit(fastmath=True, inline="always", cache=True)
    def _add_flatten(num0, num1, num2, den, p0, p1, p2, q0, q1, q2, scale):
        """One neighbour ``q`` of a row of pixels ``p`` in a flattening pass: ``num += w · q``, ``den += w``,
        ``w = exp(-|p - q|² · scale)`` (`_exp_neg_flatten`); every argument but the last a 1-D row."""
        for i in range(den.shape[0]):
            e0, e1, e2 = p0[i] - q0[i], p1[i] - q1[i], p2[i] - q2[i]
            w = _exp_neg_flatten((e0 * e0 + e1 * e1 + e2 * e2) * scale)
            num0[i] += w * q0[i]
            num1[i] += w * q1[i]
            num2[i] += w * q2[i]
            den[i] += w

    @njit(fastmath=True, inline="always", cache=True)
    def _add_bilateral(num0, num1, num2, den, p0, p1, p2, q0, q1, q2, t0, t1, t2, scale, weight, floor):
        """One neighbour (or upsampling tap) of a row of pixels ``p``, the bilateral sums of both kernels:
        ``num += w · t`` and ``den += w``, ``w = weight · exp(-|p - q|² · scale) + floor``, where ``q`` is the
        neighbour's colour (or guide) and ``t`` its value; every argument but the last three a 1-D row."""
        for i in range(den.shape[0]):
            e0, e1, e2 = p0[i] - q0[i], p1[i] - q1[i], p2[i] - q2[i]
            w = weight * _exp_neg((e0 * e0 + e1 * e1 + e2 * e2) * scale) + floor
            num0[i] += w * t0[i]
            num1[i] += w * t1[i]
            num2[i] += w * t2[i]
            den[i] += w

    @njit(parallel=True, fastmath=True, cache=True)
    def _area_kernel(photo, low_height, low_width):
        """``F.interpolate(photo, (h, w), mode="area")``: output pixel ``i`` averages input rows (and columns)
        ``[floor(i·H/h), ceil((i+1)·H/h))``. photo (B, H, W, 3) float32 pixel-interleaved → (B, 3, h, w) planar."""
        batch, height, width, _ = photo.shape
        out = np.empty((batch, 3, low_height, low_width), np.float32)
        for row in prange(batch * low_height):
            b, i = row // low_height, row % low_height
            top, bottom = i * height // low_height, ((i + 1) * height + low_height - 1) // low_height
            sums = np.zeros(width * 3, np.float32)  # the window's rows summed, still interleaved
            for y in range(top, bottom):
                pixels = photo[b, y].reshape(width * 3)
                for k in range(width * 3):
                    sums[k] += pixels[k]
            for j in range(low_width):
                left, right = j * width // low_width, ((j + 1) * width + low_width - 1) // low_width
                total0 = total1 = total2 = _ZERO
                for x in range(left, right):
                    total0 += sums[3 * x]
                    total1 += sums[3 * x + 1]
                    total2 += sums[3 * x + 2]
                inv = _ONE / np.float32((bottom - top) * (right - left))
                out[b, 0, i, j], out[b, 1, i, j], out[b, 2, i, j] = total0 * inv, total1 * inv, total2 * inv
        return out

    @njit(fastmath=True, inline="always", cache=True)
    def _window_sums(planes, p, y, radius, padded, count):
        """Sums over the (2r+1)² window of row ``y`` of plane ``p``, clipped at the borders (``box_filter``'s
        windows): the window's rows summed into ``padded`` (w + 2r, zero margins), then its columns; → (w,) sums, and
        ``count`` (w,) the window sizes."""
        height, width = planes.shape[1], planes.shape[2]
        top, bottom = max(y - radius, 0), min(y + radius, height - 1)
        for j in range(padded.shape[0]):
            padded[j] = _ZERO
        inner = padded[radius : radius + width]
        for yy in range(top, bottom + 1):
            source = planes[p, yy]
            for j in range(width):
                inner[j] += source[j]
        sums = np.zeros(width, np.float32)
        for dx in range(2 * radius + 1):
            shifted = padded[dx : dx + width]
            for j in range(width):
                sums[j] += shifted[j]
        rows = np.float32(bottom - top + 1)
        for j in range(width):
            count[j] = rows * np.float32(min(j + radius, width - 1) - max(j - radius, 0) + 1)
        return sums

    @njit(parallel=True, fastmath=True, cache=True)
    def _self_guided_kernel(x, eps, radius):
        """`guided_filter_coefficients` of planes guided by themselves: x (B, C, h, w) float32, eps (B, C) → (B, 2C,
        h, w): each image's averaged ``A`` of its channels, then their ``b``."""
        batch, channels, height, width = x.shape
        planes = x.reshape(batch * channels, height, width)
        squares = np.empty_like(planes)
        for row in prange(batch * channels * height):
            p, y = row // height, row % height
            for j in range(width):
                squares[p, y, j] = planes[p, y, j] * planes[p, y, j]
        models = np.empty((batch * 2 * channels, height, width), np.float32)  # each window's a, b
        for row in prange(batch * channels * height):
            p, y = row // height, row % height
            b, c = p // channels, p % channels
            padded, count = np.empty(width + 2 * radius, np.float32), np.empty(width, np.float32)
            mean = _window_sums(planes, p, y, radius, padded, count)
            mean_square = _window_sums(squares, p, y, radius, padded, count)
            a_row, b_row = models[b * 2 * channels + c, y], models[b * 2 * channels + channels + c, y]
            for j in range(width):
                inv = _ONE / count[j]
                m = mean[j] * inv
                variance = max(mean_square[j] * inv - m * m, _ZERO)
                a = variance / (variance + eps[b, c])
                a_row[j], b_row[j] = a, m - a * m
        out = np.empty_like(models)  # each pixel's a and b averaged over the windows that hold it
        for row in prange(batch * 2 * channels * height):
            p, y = row // height, row % height
            padded, count = np.empty(width + 2 * radius, np.float32), np.empty(width, np.float32)
            sums = _window_sums(models, p, y, radius, padded, count)
            out_row = out[p, y]
            for j in range(width):
                out_row[j] = sums[j] / count[j]
        return out.reshape(batch, 2 * channels, height, width)

    @njit(parallel=True, fastmath=True, cache=True)
    def _flatten_kernel(x, minus_inv_two_var, radii, dilations):
        """`RegionFlattener._flatten`, every pass in one call: pass ``k`` is the (2r+1)² bilateral mean with
        ``r = radii[k]`` and taps ``dilations[k]`` pixels apart, ``-1 / 2σ²`` of image ``b`` from
        ``minus_inv_two_var[k, b]``, replicate borders. x (B, 3, H, W) float32 planar → (B, 3, H, W). Two buffers
        serve all passes (each pass reads one, writes the other)."""
        batch, _, height, width = x.shape
        reach = 0
        for k in range(radii.shape[0]):
            reach = max(reach, radii[k] * dilations[k])
        # columns padded by replication once a pass, so every neighbour's row is a contiguous slice
        padded = np.empty((batch, 3, height, width + 2 * reach), np.float32)
        current, buffers = x, (np.empty_like(x), np.empty_like(x))
        for k in range(radii.shape[0]):
            spare = buffers[k % 2]  # never x: the input is the caller's
            r = radii[k] * dilations[k]  # the farthest tap
            step = dilations[k]
            for row in prange(batch * height):
                b, y = row // height, row % height
                for c in range(3):
                    source, target = current[b, c, y], padded[b, c, y]
                    target[r : r + width] = source
                    for i in range(r):
                        target[i] = source[0]
                        target[r + width + i] = source[width - 1]
            for row in prange(batch * height):
                b, y = row // height, row % height
                scale = np.float32(-minus_inv_two_var[k, b])  # 1 / 2σ² > 0
                # 1-D contiguous slices: LLVM vectorizes loops over those (slices of a 2-D view it does not)
                c0, c1, c2 = (
                    padded[b, 0, y, r : r + width],
                    padded[b, 1, y, r : r + width],
                    padded[b, 2, y, r : r + width],
                )
                num0, num1, num2 = c0.copy(), c1.copy(), c2.copy()  # the centre, weight 1
                den = np.ones(width, np.float32)
                for dy in range(-r, r + 1, step):
                    yy = min(max(y + dy, 0), height - 1)
                    for dx in range(-r, r + 1, step):
                        if dy == 0 and dx == 0:
                            continue
                        n0 = padded[b, 0, yy, r + dx : r + dx + width]
                        n1 = padded[b, 1, yy, r + dx : r + dx + width]
                        n2 = padded[b, 2, yy, r + dx : r + dx + width]
                        _add_flatten(num0, num1, num2, den, c0, c1, c2, n0, n1, n2, scale)
                out0, out1, out2 = spare[b, 0, y], spare[b, 1, y], spare[b, 2, y]
                for i in range(width):
                    inv = _ONE / den[i]
                    out0[i] = num0[i] * inv
                    out1[i] = num1[i] * inv
                    out2[i] = num2[i] * inv
            current = spare
        return current

    @njit(fastmath=True, inline="always", cache=True)
    def _polynomial(q, c):
        """The polynomial ``c`` (`_chebyshev_horner`) at ``q``."""
        u = (q - c[0]) * c[1]
        y = c[2]
        for k in range(3, c.shape[0]):
            y = y * u + c[k]
        return y

    @njit(fastmath=True, inline="always", cache=True)
    def _rgb_to_lab_row(s, matrix):
        """A planar row s (3, W) of RGB in [-1, 1] → L*, a*, b* in place (`ghibligan.models.color.rgb_to_lab`)."""
        width = s.shape[1]
        for c in range(3):
            row = s[c]
            for i in range(width):  # linear RGB
                v = min(max((row[i] + _ONE) * _HALF, _ZERO), _ONE)
                row[i] = v * np.float32(1 / 12.92) if v <= np.float32(0.04045) else _polynomial(v, _SRGB_DECODE)
        f = np.empty((3, width), np.float32)
        for c in range(3):
            fc = f[c]
            for i in range(width):  # CIE's f of X / Xw, Y, Z / Zw
                t = matrix[c, 0] * s[0, i] + matrix[c, 1] * s[1, i] + matrix[c, 2] * s[2, i]
                t = min(max(t, _ZERO), np.float32(_CIE_F_TOP))
                linear = np.float32(7.787) * t + np.float32(16 / 116)
                fc[i] = linear if t <= np.float32(0.008856) else _polynomial(math.sqrt(math.sqrt(t)), _CUBE_ROOT)
        for i in range(width):
            fx, fy, fz = f[0, i], f[1, i], f[2, i]
            s[0, i] = np.float32(116.0) * fy - np.float32(16.0)
            s[1, i] = np.float32(500.0) * (fx - fy)
            s[2, i] = np.float32(200.0) * (fy - fz)

    @njit(fastmath=True, inline="always", cache=True)
    def _staircase_shift(signal, step, offset, softness, strength):
        """`LevelQuantizer._shift` of one value: the staircase's value minus ``signal``."""
        t = (signal - offset) / step
        frac = t - math.floor(t)
        ramp = min(max((frac - _ONE) / softness + _ONE, _ZERO), _ONE)
        return (strength * step) * (ramp * ramp * (_THREE - _TWO * ramp) + _HALF - frac)

    @njit(fastmath=True, inline="always", cache=True)
    def _cie_f_inverse(f):
        return f * f * f if f > np.float32(0.2069) else (f - np.float32(16.0 / 116.0)) / np.float32(7.787)

    @njit(fastmath=True, inline="always", cache=True)
    def _lab_to_rgb_row(s, matrix):
        """A planar row s (3, W) of L*, a*, b* → RGB in [-1, 1] in place (`ghibligan.models.color.lab_to_rgb`)."""
        width = s.shape[1]
        for i in range(width):
            fy = (s[0, i] + np.float32(16.0)) / np.float32(116.0)
            x = _cie_f_inverse(fy + s[1, i] / np.float32(500.0))
            y = _cie_f_inverse(fy)
            z = _cie_f_inverse(fy - s[2, i] / np.float32(200.0))
            s[0, i] = min(max(matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2] * z, _ZERO), _ONE)
            s[1, i] = min(max(matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2] * z, _ZERO), _ONE)
            s[2, i] = min(max(matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2] * z, _ZERO), _ONE)
        for c in range(3):
            row = s[c]
            for i in range(width):
                v = row[i]
                v = (
                    np.float32(12.92) * v
                    if v <= np.float32(0.0031308)
                    else _polynomial(math.sqrt(math.sqrt(v)), _SRGB_ENCODE)
                )
                row[i] = v * _TWO - _ONE

    @njit(parallel=True, fastmath=True, cache=True)
    def _output_stage_kernel(
        photo, detail_low, both_low, tap_offset, tap_weight, tap_count, jbu_scale,
        up_rows, up_row_weights, up_cols, up_col_weights, detail, smoothed,
        w1, b1, w2, b2, w3, b3, levels, luma, lab_mode, chroma, coring,
    ):  # fmt: skip
        """The full-resolution stage, per pixel: joint bilateral upsampling, the photo's detail, the tone head, the
        posterizer, each clamped to [-1, 1] as the torch path is.

        photo (B, H, W, 3) float32 pixel-interleaved (channels-last), detail_low (B, 6, h, w): the detail as a linear
        model of the photo at low resolution, ``bilinear(A) · photo + bilinear(b)`` (A, b: its channels 0-2, 3-5),
        both_low (B, 6, h + 2, w + 2) the surface and the guide at low resolution, padded by one replicated pixel;
        tap_offset / tap_weight (s, 2) and tap_count (s,): the bilinear taps of each phase (`_bilinear_taps`);
        jbu_scale: 1 / 2σ²; up_rows / up_cols (H, 2) | (W, 2) int and their weights: the bilinear ×(H/h, W/w) resize
        of detail_low (``F.interpolate``, ``align_corners=False``); detail (B,): the detail weight; smoothed: the
        detail is `PhotoSmoother`'s smoothed photo, so the surface is clamped after adding it rather than before;
        coring (B,): the detail's ``1 / 2τ²`` (0: none, `guided.core`); w1 (B, K, 3), b1 (B, K),
        w2 (B, K, K), b2 (B, K), w3 (3, K), b3 (3,): the tone head with its style biases folded in (K = 0: none);
        levels (B, 4): step, offset, softness, strength (strength 0: none); luma (3,): the posterizer's luma weights;
        lab_mode: cut the levels in CIE L* instead (`LevelQuantizer(space="lab")`) and write L*a*b* pixels, a* and
        b* times chroma (B,), for `_median3_kernel` (lab mode) to median and convert.
        → (B, H, W, 3) float32: RGB, or L*a*b* in lab_mode.
        """
        batch, height, width, _ = photo.shape
        low_width = detail_low.shape[3]
        scale = tap_offset.shape[0]
        hidden = w1.shape[1]
        out = np.empty((batch, height, width, 3), np.float32)
        for row in prange(batch * height):
            b, y = row // height, row % height
            a, i = y % scale, y // scale
            px = photo[b, y]  # (W, 3)
            s = np.empty((3, width), np.float32)  # the row's surface
            # 1. joint bilateral upsampling, phase by phase along the row (each phase has fixed taps). Every inner
            # loop below runs over 1-D contiguous slices, which LLVM vectorizes (2-D indexing there it does not)
            for phase in range(min(scale, width)):
                count = (width - phase + scale - 1) // scale  # pixels x = j·s + phase < W
                guide = np.empty((3, count), np.float32)  # this phase's pixels, planar
                for j in range(count):
                    for c in range(3):
                        guide[c, j] = px[j * scale + phase, c]
                g0, g1, g2 = guide[0], guide[1], guide[2]
                num0, num1, num2 = np.zeros(count, np.float32), np.zeros(count, np.float32), np.zeros(count, np.float32)
                den = np.zeros(count, np.float32)
                for ty in range(tap_count[a]):
                    ly, wy = 1 + i + tap_offset[a, ty], tap_weight[a, ty]
                    for tx in range(tap_count[phase]):
                        lx, wxy = 1 + tap_offset[phase, tx], wy * tap_weight[phase, tx]
                        end = lx + count
                        t0, t1, t2 = both_low[b, 0, ly, lx:end], both_low[b, 1, ly, lx:end], both_low[b, 2, ly, lx:end]
                        q0, q1, q2 = both_low[b, 3, ly, lx:end], both_low[b, 4, ly, lx:end], both_low[b, 5, ly, lx:end]
                        _add_bilateral(
                            num0, num1, num2, den, g0, g1, g2, q0, q1, q2, t0, t1, t2, jbu_scale, wxy, _FLOOR
                        )
                for j in range(count):
                    inv = _ONE / den[j]
                    guide[0, j] = num0[j] * inv
                    guide[1, j] = num1[j] * inv
                    guide[2, j] = num2[j] * inv
                if not smoothed or detail[b] == 0:  # (else clamped with the smoothed photo added, below)
                    for j in range(count):
                        guide[0, j] = _clamp(guide[0, j])
                        guide[1, j] = _clamp(guide[1, j])
                        guide[2, j] = _clamp(guide[2, j])
                for j in range(count):
                    for c in range(3):
                        s[c, j * scale + phase] = guide[c, j]
            # 2. the photo's detail, bilinear(A) · photo + bilinear(b): the two low-resolution rows of the model
            # mixed, then the columns
            if detail[b] != 0:
                r0, r1 = up_rows[y, 0], up_rows[y, 1]
                v0, v1 = up_row_weights[y, 0], up_row_weights[y, 1]
                mixed = np.empty((6, low_width), np.float32)
                for c in range(6):
                    top, bottom, mixed_c = detail_low[b, c, r0], detail_low[b, c, r1], mixed[c]
                    for j in range(low_width):
                        mixed_c[j] = v0 * top[j] + v1 * bottom[j]
                for x in range(width):
                    c0, c1 = up_cols[x, 0], up_cols[x, 1]
                    u0, u1 = up_col_weights[x, 0], up_col_weights[x, 1]
                    d0 = (u0 * mixed[0, c0] + u1 * mixed[0, c1]) * px[x, 0] + u0 * mixed[3, c0] + u1 * mixed[3, c1]
                    d1 = (u0 * mixed[1, c0] + u1 * mixed[1, c1]) * px[x, 1] + u0 * mixed[4, c0] + u1 * mixed[4, c1]
                    d2 = (u0 * mixed[2, c0] + u1 * mixed[2, c1]) * px[x, 2] + u0 * mixed[5, c0] + u1 * mixed[5, c1]
                    weight = detail[b]
                    if coring[b] != 0:  # texture and noise out, edges kept
                        d = luma[0] * d0 + luma[1] * d1 + luma[2] * d2
                        weight *= _ONE - _exp_neg(d * d * coring[b])
                    s[0, x] += weight * d0
                    s[1, x] += weight * d1
                    s[2, x] += weight * d2
                    if smoothed:
                        s[0, x], s[1, x], s[2, x] = _clamp(s[0, x]), _clamp(s[1, x]), _clamp(s[2, x])
            # 3. the tone head x + MLP(x), in chunks of pixels so its hidden rows stay in L1
            if hidden:
                h1, h2 = np.empty((hidden, _CHUNK), np.float32), np.empty((hidden, _CHUNK), np.float32)
                for start in range(0, width, _CHUNK):
                    n = min(_CHUNK, width - start)
                    x0, x1, x2 = s[0, start : start + n], s[1, start : start + n], s[2, start : start + n]
                    for k in range(hidden):
                        h, a0, a1, a2, bias = h1[k], w1[b, k, 0], w1[b, k, 1], w1[b, k, 2], b1[b, k]
                        for j in range(n):
                            v = a0 * x0[j] + a1 * x1[j] + a2 * x2[j] + bias
                            h[j] = max(v, _SLOPE * v)
                    for k in range(hidden):
                        h = h2[k]
                        h[:n] = b2[b, k]
                        for m in range(hidden):
                            weight, source = w2[b, k, m], h1[m]
                            for j in range(n):
                                h[j] += weight * source[j]
                        for j in range(n):
                            h[j] = max(h[j], _SLOPE * h[j])
                    for c in range(3):
                        xc = s[c, start : start + n]
                        for j in range(n):
                            xc[j] += b3[c]
                        for m in range(hidden):
                            weight, source = w3[c, m], h2[m]
                            for j in range(n):
                                xc[j] += weight * source[j]
                        for j in range(n):
                            xc[j] = _clamp(xc[j])
            # 4. the posterizer in luma: a grey shift onto the staircase
            step, offset, softness, strength = levels[b, 0], levels[b, 1], levels[b, 2], levels[b, 3]
            out_row = out[b, y]
            if lab_mode:  # or in CIE L*, the row converted to L*a*b* (planar, so the table loops vectorize)
                _rgb_to_lab_row(s, _RGB_TO_XYZ_W)
                gain = chroma[b]
                for x in range(width):
                    lightness = s[0, x]
                    if strength != 0:  # the staircase of L* / 50 - 1, in [-1, 1]
                        shift = _staircase_shift(lightness * np.float32(0.02) - _ONE, step, offset, softness, strength)
                        lightness += np.float32(50.0) * shift
                    out_row[x, 0], out_row[x, 1], out_row[x, 2] = lightness, s[1, x] * gain, s[2, x] * gain
                continue
            for x in range(width):
                v0, v1, v2 = s[0, x], s[1, x], s[2, x]
                if strength != 0:
                    lum = luma[0] * v0 + luma[1] * v1 + luma[2] * v2
                    shift = _staircase_shift(lum, step, offset, softness, strength)
                    v0, v1, v2 = v0 + shift, v1 + shift, v2 + shift
                out_row[x, 0], out_row[x, 1], out_row[x, 2] = _clamp(v0), _clamp(v1), _clamp(v2)
        return out

    @njit(fastmath=True, inline="always", cache=True)
    def _sort2(a, b):
        return min(a, b), max(a, b)

    @njit(fastmath=True, inline="always", cache=True)
    def _luma_row(px, luma, out):
        """``out[1:W+1]`` = the luma of a row of pixels px (W, 3), ``out[0]`` and ``out[W+1]`` its edges replicated."""
        width = px.shape[0]
        for x in range(width):
            out[x + 1] = luma[0] * px[x, 0] + luma[1] * px[x, 1] + luma[2] * px[x, 2]
        out[0], out[width + 1] = out[1], out[width]

    @njit(fastmath=True, inline="always", cache=True)
    def _median_row(up, mid, down, strength, median):
        """``median[x] = strength · (median₃ₓ₃ - centre)`` for a row, from three padded rows (W + 2) of the signal;
        the median by `guided.median9`'s selection network (min and max only, so it vectorizes)."""
        width = median.shape[0]
        for x in range(width):
            p0, p1, p2 = up[x], up[x + 1], up[x + 2]
            p3, p4, p5 = mid[x], mid[x + 1], mid[x + 2]
            p6, p7, p8 = down[x], down[x + 1], down[x + 2]
            p1, p2 = _sort2(p1, p2)
            p4, p5 = _sort2(p4, p5)
            p7, p8 = _sort2(p7, p8)
            p0, p1 = _sort2(p0, p1)
            p3, p4 = _sort2(p3, p4)
            p6, p7 = _sort2(p6, p7)
            p1, p2 = _sort2(p1, p2)
            p4, p5 = _sort2(p4, p5)
            p7, p8 = _sort2(p7, p8)
            p0, p3 = _sort2(p0, p3)
            p5, p8 = _sort2(p5, p8)
            p4, p7 = _sort2(p4, p7)
            p3, p6 = _sort2(p3, p6)
            p1, p4 = _sort2(p1, p4)
            p2, p5 = _sort2(p2, p5)
            p4, p7 = _sort2(p4, p7)
            p4, p2 = _sort2(p4, p2)
            p6, p4 = _sort2(p6, p4)
            p4, p2 = _sort2(p4, p2)
            median[x] = strength * (p4 - mid[x + 1])

    @njit(parallel=True, fastmath=True, cache=True)
    def _median3_kernel(pixels, strength, luma, lab_mode, rows):
        """`LumaDespeckle` of radius 1, in place: ``x + strength · (median₃ₓ₃(y) - y)`` on every channel, clamped to
        [-1, 1], ``y`` the luma, edges replicated; the median by `guided.median9`'s selection network (min and max
        only, so it vectorizes). pixels (B, H, W, 3) float32 pixel-interleaved, strength (B,).

        ``lab_mode``, the lab space's end: pixels are L*a*b* (``luma`` (1, 0, 0) picks L*), the median is blended
        into L* alone (a* and b* kept, as `LumaDespeckle.despeckle_lab`), then every row, at any strength, is
        converted to RGB in [-1, 1].

        In place and without a luma image: each block of ``rows`` rows keeps the luma of three rows in a ring and
        computes a row's luma before it changes that row; the rows just outside each block are read first, in a pass
        of their own, before any block writes."""
        batch, height, width, _ = pixels.shape
        blocks = (height + rows - 1) // rows
        halo = np.empty((batch * blocks, 2, width + 2), np.float32)  # the rows above and below each block
        for block in prange(batch * blocks):
            b, top = block // blocks, (block % blocks) * rows
            bottom = min(top + rows, height)
            _luma_row(pixels[b, max(top - 1, 0)], luma, halo[block, 0])
            _luma_row(pixels[b, min(bottom, height - 1)], luma, halo[block, 1])
        for block in prange(batch * blocks):
            b, top = block // blocks, (block % blocks) * rows
            bottom = min(top + rows, height)
            if strength[b] == 0 and not lab_mode:
                continue
            ring = np.empty((3, width + 2), np.float32)
            ring[0] = halo[block, 0]
            _luma_row(pixels[b, top], luma, ring[1])
            median = np.empty(width, np.float32)
            planar = np.empty((3, width), np.float32)
            for y in range(top, bottom):
                up, mid, down = ring[(y - top) % 3], ring[(y - top + 1) % 3], ring[(y - top + 2) % 3]
                if y + 1 < bottom:
                    _luma_row(pixels[b, y + 1], luma, down)  # before row y + 1 changes
                elif bottom < height:
                    down[:] = halo[block, 1]
                else:
                    down[:] = mid  # the last row, replicated
                px = pixels[b, y]
                if not lab_mode:
                    _median_row(up, mid, down, strength[b], median)
                    for x in range(width):
                        shift = median[x]
                        px[x, 0] = _clamp(px[x, 0] + shift)
                        px[x, 1] = _clamp(px[x, 1] + shift)
                        px[x, 2] = _clamp(px[x, 2] + shift)
                    continue
                for x in range(width):  # planar, so the conversion's loops vectorize
                    planar[0, x], planar[1, x], planar[2, x] = px[x, 0], px[x, 1], px[x, 2]
                if strength[b] != 0:
                    _median_row(up, mid, down, strength[b], median)
                    p0 = planar[0]
                    for x in range(width):
                        p0[x] += median[x]
                _lab_to_rgb_row(planar, _XYZ_W_TO_RGB)
                for x in range(width):
                    px[x, 0], px[x, 1], px[x, 2] = planar[0, x], planar[1, x], planar[2, x]


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).numpy()


def run_kernel(kernel, *args) -> np.ndarray:
    """``kernel(*args)`` on as many threads as torch uses, one call at a time (`_LOCK`)."""
    with _LOCK:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        return kernel(*args)


def area_downsample(photo: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(photo, size, mode="area")`` of a (B, 3, H, W) float32 CPU photo, read channels-last without a
    copy where it is stored so (as the pipeline's are) → (B, 3, h, w) float32, planar."""
    pixels = photo.permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3): a view of a channels-last tensor
    return torch.from_numpy(run_kernel(_area_kernel, _numpy(pixels), *size))


def flatten(x: torch.Tensor, passes: Sequence[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
    """`RegionFlattener`'s passes, each ``(radius, dilation, -1 / 2σ² (B,))``: x (B, 3, h, w) float32 on the CPU →
    (B, 3, h, w) float32."""
    if not passes:
        return x
    radii = np.array([radius for radius, _, _ in passes], np.int64)
    dilations = np.array([dilation for _, dilation, _ in passes], np.int64)
    scales = np.ascontiguousarray(np.stack([_numpy(scale.flatten()) for _, _, scale in passes]))
    out = run_kernel(_flatten_kernel, _numpy(x.contiguous()), scales, radii, dilations)
    return torch.from_numpy(out)


def self_guided_coefficients(x: torch.Tensor, eps: torch.Tensor, radius: int) -> torch.Tensor:
    """`guided.guided_filter_coefficients(x, None, radius, eps)`: x (B, C, h, w) float32 on the CPU guided by itself,
    eps (B, C) → (B, 2C, h, w) float32, ``A`` then ``b``. (``F.avg_pool2d`` with clipped windows: ~10x slower.)"""
    out = run_kernel(_self_guided_kernel, _numpy(x.contiguous()), np.ascontiguousarray(_numpy(eps)), radius)
    return torch.from_numpy(out)


def resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The two source indices and weights of each output pixel of a bilinear resize ``in_size`` → ``out_size``
    (``F.interpolate(..., align_corners=False)`` given a size): (out, 2) int64 and (out, 2) float32."""
    ratio = in_size / out_size
    source = np.maximum((np.arange(out_size) + 0.5) * ratio - 0.5, 0.0)
    first = np.floor(source).astype(np.int64)
    second = first + (first < in_size - 1)
    fraction = (source - first).astype(np.float32)
    return np.stack([first, second], 1), np.stack([1 - fraction, fraction], 1)


def output_stage(
    photo: torch.Tensor,
    photo_low: torch.Tensor,
    surface_low: torch.Tensor,
    taps: list[tuple[tuple[int, float], ...]],
    range_sigma: torch.Tensor,
    detail: torch.Tensor | None,
    tone: tuple[torch.Tensor, ...] | None,
    levels: tuple[torch.Tensor, ...] | None,
    luma: tuple[float, float, float],
    lab_chroma: torch.Tensor | None = None,
    coring: torch.Tensor | None = None,
    smoothing: torch.Tensor | None = None,
) -> torch.Tensor:
    """The guided generator's full-resolution stage in one pass over the image (see `_output_stage_kernel`).

    Args:
        photo: (B, 3, H, W) float32 on the CPU, any layout (channels-last is read without a copy).
        photo_low, surface_low: (B, 3, h, w) float32, ``h = ceil(H / s)``.
        taps: for each of the ``s`` phases of the ×s upsampling, its ``(offset, weight)`` low-resolution taps along
            one axis (`ghibligan.models.guided._bilinear_taps`).
        range_sigma: the joint bilateral upsampler's σ (a scalar tensor).
        detail: (B,) the share of the photo's detail each image keeps, or None.
        tone: the tone head's (w1 (B, K, 3), b1 (B, K), w2 (B, K, K), b2 (B, K), w3 (3, K), b3 (3,)), style biases
            folded into b1 and b2, or None.
        levels: the posterizer's (step, offset, softness, strength), each (B,), or None.
        luma: the posterizer's luma weights.
        lab_chroma: (B,) chroma gains: the posterizer in CIE L* (its output L*a*b*, for `lab_finish`); None: luma.
        coring: (B,) ``1 / 2τ²`` of the detail's coring (`guided.core`; ``luma`` its weights), or None.
        smoothing: `PhotoSmoother`'s coefficients (B, 6, h, w) float32, ``A`` then ``b`` (`self_guided_coefficients`):
            the detail is the smoothed photo ``bilinear(A) · photo + bilinear(b)`` (``surface_low`` then holds the
            network's surface minus the detail weight times ``photo_low``); None: the photo's raw detail
            ``photo - bilinear(photo_low)``.

    Returns:
        (B, 3, H, W) float32, channels-last: RGB, or L*a*b* with ``lab_chroma``.
    """
    batch, _, height, width = photo.shape
    low_height, low_width = photo_low.shape[-2:]
    scale = len(taps)
    tap_offset, tap_weight = np.zeros((scale, 2), np.int64), np.zeros((scale, 2), np.float32)
    tap_count = np.array([len(phase_taps) for phase_taps in taps], np.int64)
    for phase, phase_taps in enumerate(taps):
        for t, (offset, weight) in enumerate(phase_taps):
            tap_offset[phase, t], tap_weight[phase, t] = offset, weight
    both_low = torch.nn.functional.pad(torch.cat([surface_low, photo_low], 1), (1, 1, 1, 1), mode="replicate")
    up_rows, up_row_weights = resize_taps(low_height, height)
    up_cols, up_col_weights = resize_taps(low_width, width)
    if tone is None:
        empty = np.zeros((batch, 0, 3), np.float32)
        tone_arrays = (empty, np.zeros((batch, 0), np.float32), np.zeros((batch, 0, 0), np.float32))
        tone_arrays += (np.zeros((batch, 0), np.float32), np.zeros((3, 0), np.float32), np.zeros(3, np.float32))
    else:
        tone_arrays = tuple(np.ascontiguousarray(_numpy(t)) for t in tone)
    level_array = np.zeros((batch, 4), np.float32)
    level_array[:, 0] = 1.0  # any step: strength 0 skips the posterizer
    if levels is not None:
        level_array = np.ascontiguousarray(_numpy(torch.stack([v.reshape(batch) for v in levels], 1)))
    detail_array = np.zeros(batch, np.float32) if detail is None else _numpy(detail.reshape(batch))
    if detail is None:  # never read
        detail_low = torch.zeros(batch, 6, 1, 1)
    elif smoothing is None:  # photo - bilinear(photo_low)
        detail_low = torch.cat([torch.ones_like(photo_low), -photo_low], 1)
    else:
        detail_low = smoothing
    pixels = photo.permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3): a view of a channels-last tensor
    jbu_scale = np.float32(0.5 / float(range_sigma) ** 2)
    out = run_kernel(
        _output_stage_kernel,
        _numpy(pixels), _numpy(detail_low.contiguous()), _numpy(both_low.contiguous()),
        tap_offset, tap_weight, tap_count, jbu_scale,
        up_rows, up_row_weights, up_cols, up_col_weights, detail_array, smoothing is not None,
        *tone_arrays, level_array, np.array(luma, np.float32), lab_chroma is not None,
        np.ones(batch, np.float32) if lab_chroma is None else _numpy(lab_chroma.reshape(batch)),
        np.zeros(batch, np.float32) if coring is None else _numpy(coring.reshape(batch)),
    )  # fmt: skip
    return torch.from_numpy(out).permute(0, 3, 1, 2)  # (B, 3, H, W), channels-last


def luma_median3(
    x: torch.Tensor, strength: torch.Tensor, luma: tuple[float, float, float], inplace: bool = False
) -> torch.Tensor:
    """`LumaDespeckle` of radius 1 (see `_median3_kernel`), clamped to [-1, 1]: x (B, 3, H, W) float32 on the CPU,
    strength (B,) → (B, 3, H, W) float32, channels-last. ``inplace``: write into ``x`` itself where it is stored
    channels-last (as `output_stage` returns it), saving a copy of the image; the input is left alone otherwise."""
    pixels = x.permute(0, 2, 3, 1)  # (B, H, W, 3): a view of a channels-last tensor
    if not (inplace and pixels.is_contiguous()):
        pixels = pixels.clone(memory_format=torch.contiguous_format)
    run_kernel(
        _median3_kernel, pixels.detach().numpy(), _numpy(strength.reshape(-1)), np.array(luma, np.float32), False, 32
    )
    return pixels.permute(0, 3, 1, 2)


def lab_finish(lab: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """The end of a lab-space model, in place on `output_stage`'s L*a*b* output (B, 3, H, W) channels-last: the 3×3
    median of L* at ``strength`` (B,) (zeros: none), then RGB in [-1, 1] (`_median3_kernel` in lab mode). Overwrites
    ``lab`` where it is stored channels-last (as `output_stage` returns it)."""
    pixels = lab.permute(0, 2, 3, 1)
    if not pixels.is_contiguous():
        pixels = pixels.contiguous()
    lightness = np.array([1.0, 0.0, 0.0], np.float32)  # the median's signal: L* itself
    run_kernel(_median3_kernel, pixels.detach().numpy(), _numpy(strength.reshape(-1)), lightness, True, 32)
    return pixels.permute(0, 3, 1, 2)
