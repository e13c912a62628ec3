"""CIE L*a*b* in torch, differentiable, for images in [-1, 1] (sRGB, D65): OpenCV's float conversion
(``cv2.COLOR_RGB2LAB`` on [0, 1] input: L* in [0, 100]), which the toon teachers quantize their levels in.

Why not BT.601 luma: L* is a function of the *linear* luminance (0.2126 R + 0.7152 G + 0.0722 B after undoing the sRGB
curve), so the same L* level is a different luma for a green, a red or a grey; a posterizer on luma cannot put its
borders where a teacher's L* levels have theirs (docs/experiments.md, session 11).
"""

from __future__ import annotations

import torch

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights, the luma of `ghibligan.metrics` (not L*: above)

# sRGB (linear) → XYZ, D65, and the D65 white point (OpenCV's constants)
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE = (0.950456, 1.0, 1.088754)
# its inverse, computed once here (an inverse in the graph would not export to ONNX: no `linalg_inv` there)
_XYZ_TO_RGB = tuple(tuple(row) for row in torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).tolist())
_EPSILON, _KAPPA = 0.008856, 7.787  # CIE's linear segment near black (OpenCV's values)


def _matrix(rows, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=x.dtype, device=x.device)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [-1, 1] → (B, 3, H, W) L* in [0, 100], a* and b* (roughly ±100)."""
    srgb = ((x + 1) / 2).clamp(0, 1)
    linear = torch.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055).clamp_min(1e-6) ** 2.4)
    matrix = _matrix(_RGB_TO_XYZ, x) / _matrix(_WHITE, x)[:, None]
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear)
    f = torch.where(xyz > _EPSILON, xyz.clamp_min(1e-6) ** (1 / 3), _KAPPA * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """The inverse of `rgb_to_lab`: (B, 3, H, W) L*a*b* → RGB in [-1, 1] (out-of-gamut colours clipped)."""
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = torch.where(f > 0.2069, f**3, (f - 16 / 116) / _KAPPA) * _matrix(_WHITE, lab)[None, :, None, None]
    linear = torch.einsum("ij,bjhw->bihw", _matrix(_XYZ_TO_RGB, lab), xyz)
    linear = linear.clamp(0, 1)
    srgb = torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear.clamp_min(1e-8) ** (1 / 2.4) - 0.055)
    return srgb * 2 - 1
