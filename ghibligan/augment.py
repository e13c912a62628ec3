"""Crop, flip and normalize a batch of decoded pairs on the device it is on, in one gather per image.

The DataLoader hands over whole resized uint8 pairs (`ghibligan.data_cache.DecodedPairs`), four times smaller than
float crops, with each sample's crop window ``(top, left, flip)`` drawn from ``(seed, epoch, row)``. `crop_pairs` cuts
that window out of the photo and the target of each sample, flips it where asked, and maps it to [-1, 1] with the
operations of `ghibligan.image_io.pil_to_tensor`: the result equals, value for value, the per-sample CPU path's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

CROPPED_KEYS = ("input", "target")  # (B, H, W, 3) uint8 whole images, cut here
READY_KEYS = ("target_smoothed",)  # (B, R, R, 3) uint8 crops made by the loader, only normalized here


@contextlib.contextmanager
def one_thread(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run torch's CPU ops in this block on one thread (nothing changes for a GPU ``device``).

    Data ops touch ~10⁵ bytes: splitting them across OpenMP threads gains nothing, and on a loaded machine each op
    waits for a descheduled sibling thread — measured 60-300× slower on 2 busy cores. Switching costs microseconds.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def crop_pairs(batch: dict[str, torch.Tensor], resolution: int, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Batched synchronized crop + horizontal flip + normalization of a `collate_decoded_pairs` batch.

    Args:
        batch (`dict`): ``input`` and ``target`` (B, H, W, 3) uint8, ``crop`` (B, 3) integer ``(top, left, flip)``,
            optionally ``target_smoothed`` (B, R, R, 3) uint8 and ``style`` (B,); all on one device.
        resolution (`int`): the side R of the square crops.
        channels_last (`bool`, *optional*, defaults to `False`): return the crops in the channels-last memory layout
            (what the gather gives for free; for a model trained with ``--channels_last``) instead of contiguous NCHW.

    Returns:
        `dict[str, torch.Tensor]`: ``input``, ``target`` (and ``target_smoothed``) (B, 3, R, R) float32 in [-1, 1];
        ``style`` passes through; ``crop`` is consumed.
    """
    images = batch["input"]
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`batch['input']` must be (B, H, W, 3) uint8, got {tuple(images.shape)} of {images.dtype}.")
    height, width = images.shape[1:3]
    if height < resolution or width < resolution:
        raise ValueError(f"`resolution` {resolution} is larger than the batch's {width}x{height} images.")
    with one_thread(images.device):
        return _crop_pairs(batch, resolution, channels_last)


def _crop_pairs(batch: dict[str, torch.Tensor], resolution: int, channels_last: bool) -> dict[str, torch.Tensor]:
    images = batch["input"]
    count = images.shape[0]
    tops, lefts, flips = batch["crop"].to(images.device).long().unbind(1)  # each (B,)
    steps = torch.arange(resolution, device=images.device)
    rows = tops[:, None] + steps  # (B, R)
    cols = torch.where(flips[:, None].bool(), lefts[:, None] + resolution - 1 - steps, lefts[:, None] + steps)  # (B, R)
    index = (torch.arange(count, device=images.device)[:, None, None], rows[:, :, None], cols[:, None, :])
    out = {key: value for key, value in batch.items() if key not in (*CROPPED_KEYS, *READY_KEYS, "crop")}
    for key in (*CROPPED_KEYS, *READY_KEYS):
        if key not in batch:
            continue
        crops = batch[key][index] if key in CROPPED_KEYS else batch[key]  # (B, R, R, 3) uint8
        crops = crops.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (B, 3, R, R), channels-last strides
        out[key] = crops if channels_last else crops.contiguous()
    return out
