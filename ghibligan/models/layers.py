"""Small building blocks shared by the generators and discriminators.

Norm and activation layers are chosen by *string* so that a model's config stays JSON (the kwargs of ``__init__``
are what `PyTorchModelHubMixin` writes to ``config.json``). Padding helpers let fully convolutional models take any
image size: pad up to the multiple their depth needs, run, crop back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "none")
ACTIVATIONS = ("relu", "leaky_relu")
UPSAMPLE_MODES = ("transpose", "resize")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise a `ValueError` that names the argument, echoes its value and lists the valid ones."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def check_positive_int(name: str, value: object, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def inference_slice_rows(module: nn.Module, height: int, width: int) -> int | None:
    """Rows per slice for a module that runs large images in slices of whole rows at inference, about
    ``module.inference_pixels`` pixels each, so its activations stay in cache; ``None`` for one pass: in training,
    with ``inference_pixels = None`` (the ONNX export sets it) or where the image fits in one slice."""
    pixels = module.inference_pixels
    if module.training or pixels is None or height * width <= pixels:
        return None
    return max(1, pixels // width)


def row_slices(height: int, rows: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Slices of ``rows`` rows covering ``height``, each read with ``halo`` more rows on both sides (fewer at the
    image's edges): ``(top, bottom, start, stop)``, the rows read and the rows kept. For sliced inference of a local
    operation: with a halo at least its reach, the kept rows equal those of one pass over the whole image."""
    return [
        (max(0, start - halo), min(height, start + rows + halo), start, min(height, start + rows))
        for start in range(0, height, rows)
    ]


def map_row_slices(
    module: nn.Module, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], halo: int = 0
) -> torch.Tensor:
    """``fn(x)`` for a map that reaches at most ``halo`` rows (0: per pixel), at inference in slices of
    `inference_slice_rows` rows, each read with its halo (`row_slices`) and joined back together; in one pass where
    that is None."""
    rows = inference_slice_rows(module, *x.shape[-2:])
    if rows is None:
        return fn(x)
    if halo == 0:
        return torch.cat([fn(part) for part in x.split(rows, dim=-2)], dim=-2)
    parts = [
        fn(x[..., top:bottom, :])[..., start - top : stop - top, :]
        for top, bottom, start, stop in row_slices(x.shape[-2], rows, halo)
    ]
    return torch.cat(parts, dim=-2)


def make_norm(norm: str, channels: int) -> nn.Module:
    """BatchNorm, InstanceNorm (no affine, no running stats, as in pix2pix) or nothing."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def make_activation(activation: str) -> nn.Module:
    if activation == "leaky_relu":
        return nn.LeakyReLU(0.2)
    return nn.ReLU()


def conv_uses_bias(norm: str) -> bool:
    """A conv followed by BatchNorm needs no bias (BN's shift replaces it); pix2pix's rule."""
    return norm != "batch"


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad ``x`` (B, C, H, W) on all sides so H and W are multiples of ``multiple``.

    The padding is split evenly between the two sides and mirrors the image (reflect), so the network sees plausible
    content at the borders; where the padding is wider than the image (tiny inputs) it repeats the edge pixels
    instead, since reflection is undefined there. Returns the padded tensor and the ``(left, right, top, bottom)``
    amounts for `crop_padding`.
    """
    height, width = x.shape[-2:]
    pad_h = -height % multiple
    pad_w = -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (0, 0, 0, 0)
    pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    mode = "reflect" if max(pads[0], pads[1]) < width and max(pads[2], pads[3]) < height else "replicate"
    return F.pad(x, pads, mode=mode), pads


def crop_padding(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo `pad_to_multiple`."""
    left, right, top, bottom = pads
    height, width = x.shape[-2:]
    return x[..., top : height - bottom, left : width - right]


def init_gan_weights(module: nn.Module, gain: float = 0.02) -> None:
    """pix2pix / DCGAN initialisation: conv weights ~ N(0, gain), norm scales ~ N(1, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
