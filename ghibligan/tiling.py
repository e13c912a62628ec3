"""Tiled inference: run a fully convolutional generator on an image too large for memory, tile by tile.

Tiles overlap by ``overlap`` pixels; each tile's output is weighted by a window that ramps linearly from the tile's
edge to its interior, and the weighted outputs are averaged, so seams blend instead of showing. Peak memory is set by
the tile size and batch, not the image: the full-size buffers are only the output and the weight sum.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` pixels of overlap."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def blend_window(height: int, width: int, overlap: int, device=None) -> torch.Tensor:
    """(H, W) weights: ~0 at the tile edges, rising linearly over ``overlap`` pixels to 1 inside."""

    def ramp(n: int) -> torch.Tensor:
        position = torch.arange(n, device=device, dtype=torch.float32)
        distance = torch.minimum(position, n - 1 - position) + 1  # 1 at the edge
        return (distance / max(overlap, 1)).clamp(max=1.0)

    return ramp(height)[:, None] * ramp(width)[None, :]


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int,
    overlap: int,
    batch_size: int = 1,
) -> torch.Tensor:
    """Apply ``fn`` ((B, C, t, t) → (B, C', t, t)) to ``image`` (C, H, W) in overlapping tiles; returns (C', H, W).

    The output buffers live on the image's device in float32; tiles are computed in whatever device/dtype ``fn`` uses.
    """
    if overlap * 2 >= tile:
        raise ValueError(f"`overlap` ({overlap}) must be less than half of `tile` ({tile}).")
    _, height, width = image.shape
    boxes = [(top, left) for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]
    tile_h, tile_w = min(tile, height), min(tile, width)
    window = blend_window(tile_h, tile_w, overlap, device=image.device)  # (t, t)
    output = None
    weight = torch.zeros(height, width, device=image.device)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        batch = torch.stack([image[:, t : t + tile_h, s : s + tile_w] for t, s in chunk])  # (b, C, t, t)
        result = fn(batch).float()  # (b, C', t, t)
        if output is None:
            output = torch.zeros(result.shape[1], height, width, device=image.device)
        for (top, left), tile_out in zip(chunk, result, strict=True):
            output[:, top : top + tile_h, left : left + tile_w] += tile_out.to(image.device) * window
            weight[top : top + tile_h, left : left + tile_w] += window
    return output / weight
