"""How noisy a photo is: one number per photo, for smoothing that adapts to it (`guided.PhotoSmoother`).

A fixed smoothing strength fitted to clean photos takes a noisy photo's grain for texture. `noise_variance` measures
the grain where the photo has no texture of its own, so a model can smooth more where there is more of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .color import LUMA

NOISE_BLOCK = 8  # pixels (of the low-resolution photo) per side of the blocks `noise_variance` measures
NOISE_PERCENTILE = 10  # which of the blocks' noise levels `noise_variance` takes: the flattest tenth, not texture
NOISE_PERCENTILE_SCALE = 0.8  # that tenth of the blocks' estimates, for Gaussian noise of σ: 0.8σ (measured)


def noise_variance(photo: torch.Tensor) -> torch.Tensor:
    """The variance (B,) of the noise in each photo's luma, (B, 3, h, w) in [-1, 1] → float32: Immerkær's (1996)
    estimate in each whole `NOISE_BLOCK`-square block, then the `NOISE_PERCENTILE` of the blocks (scaled to be
    unbiased for Gaussian noise). Texture and edges raise a block's estimate, so the flattest tenth of the photo (sky,
    walls, skin) measures its sensor noise and JPEG grain. Where a photo has no flat area at all (carving, foliage
    everywhere) that tenth is still texture, which lives in the luminance: the same estimate of the chroma (R - G)/√2
    stays low there (0.0–1.0 grey levels on 21 clean photos, where the luma's read up to 7.2), while a sensor's noise,
    independent in each channel, is as strong in it as in the luma or stronger (for noise of σ per channel, σ² against
    the luma's 0.45σ²). So the luma's estimate is capped at the chroma's: grain that is the same in every channel (a
    grey photo's) is taken for texture. A photo smaller than one block is one block. A photo the pipeline tiles is
    measured tile by tile: on 3840×2160 photos cut into 1024² tiles, `painterly` drawn by the bundled model differed
    from the untiled drawing by 0.02 grey levels more on average than without the estimate (at noise σ 6; the same
    without noise).

    No Python branch on the size: the ONNX export takes it as it is, at any size."""
    weights = torch.tensor(LUMA, dtype=torch.float32, device=photo.device)[None, :, None, None]
    photo = photo.float()
    luma = (photo * weights).sum(dim=1, keepdim=True)
    chroma = (photo[:, 0:1] - photo[:, 1:2]) * (1 / math.sqrt(2))
    return torch.minimum(_percentile_variance(luma), _percentile_variance(chroma))


def _percentile_variance(plane: torch.Tensor) -> torch.Tensor:
    """Immerkær's estimate of the noise variance (B,) of a (B, 1, h, w) plane in the `NOISE_PERCENTILE` of its
    blocks, scaled to be unbiased for Gaussian noise."""
    y = F.pad(plane, (1, 1, 1, 1), mode="replicate")
    # Immerkær's kernel [[1, -2, 1], [-2, 4, -2], [1, -2, 1]] (it cancels every plane and ramp) is the outer product of
    # two second differences: as slices, 10x faster than a one-channel conv2d on the CPU. For Gaussian noise of σ,
    # E|response| = 6σ·sqrt(2/π).
    rows = y[..., :-2, :] - 2 * y[..., 1:-1, :] + y[..., 2:, :]
    response = (rows[..., :-2] - 2 * rows[..., 1:-1] + rows[..., 2:]).abs()  # (B, 1, h, w)
    height, width = response.shape[-2:]
    pad = (0, (NOISE_BLOCK - width % NOISE_BLOCK) % NOISE_BLOCK, 0, (NOISE_BLOCK - height % NOISE_BLOCK) % NOISE_BLOCK)
    share = F.avg_pool2d(F.pad(torch.ones_like(response), pad), NOISE_BLOCK).flatten(1)  # of each block inside
    mean = F.avg_pool2d(F.pad(response, pad), NOISE_BLOCK).flatten(1) / share  # (B, blocks)
    whole = share == 1
    usable = whole | ~whole.any(dim=1, keepdim=True)  # the whole blocks, or every block if there is none
    sigma = torch.where(usable, mean * (math.sqrt(math.pi / 2) / 6), torch.inf)
    rank = usable.sum(dim=1, keepdim=True) * NOISE_PERCENTILE // 100  # (B, 1), a tensor: no size-dependent branch
    return (torch.sort(sigma, dim=1).values.gather(1, rank)[:, 0] / NOISE_PERCENTILE_SCALE).square()
