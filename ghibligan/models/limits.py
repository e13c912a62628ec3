"""Bounds on what a checkpoint may ask for, checked before a single weight is allocated.

A ``config.json`` is data from whoever published the checkpoint. Building ``UNetGenerator(ngf=600)`` allocates
gigabytes, and a tiny ``num_downs=14`` checkpoint pads every photo to 16384² pixels, so loading checks, in order:

1. `check_config_bounds`: every size-like config value is within `CONFIG_BOUNDS` (width, depth, heads, channels);
2. `build_on_meta` + `count_parameters`: the model is built on PyTorch's ``meta`` device (shapes, no memory) and its
   parameter count is compared with ``max_parameters`` (`DEFAULT_MAX_PARAMETERS`, which the caller can raise);
3. `check_weights_match`: the safetensors header (names, shapes; read with ``safe_open``, no tensor data) must match
   that model, so a missing or mismatched weights file fails before the real model exists.

`estimate_activation_bytes` runs a forward pass on the meta device to bound the memory one inference needs at a given
image size; the pipeline uses it to refuse work that would not fit.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

DEFAULT_MAX_PARAMETERS = 200_000_000  # 3.7× pix2pix's unet_256 (54.4 M); the bundled model has 1.04 M
CONFIG_BOUNDS: dict[str, int] = {
    "in_channels": 16,
    "out_channels": 16,
    "ngf": 256,  # width: unet_256 uses 64
    "num_downs": 10,  # depth: inputs are padded to a multiple of 2**num_downs (1024 at 10)
    "n_blocks": 64,
    "attention_heads": 64,
    "tone_head_channels": 256,
    # GuidedFilterGenerator
    "scale_factor": 16,
    "channels": 256,
    "num_levels": 8,
    "num_blocks": 64,
    "radius": 32,
    "guide_channels": 256,
    "tone_channels": 256,
    "line_channels": 256,
    # per-pixel passes over the image: a config could ask for millions of them (time, not memory, so the parameter
    # count and the activation estimate would not catch it); the bundled model uses 3 passes of radius 2 (and 6 dilated
    # 3x3 passes, `flatten_dilations`, which GuidedFilterGenerator bounds itself), 6 levels
    "flatten_iterations": 16,
    "flatten_radius": 8,
    "levels": 256,
    "despeckle": 4,  # a median of (2r+1)² values a pixel
    "photo_smoothing": 8,  # box filters of this radius at low resolution
}
MAX_STYLES = 64  # style names a config may list (each one a row of small embedding tables)


class ResourceLimitError(ValueError):
    """A model or an input needs more than a limit allows (``max_parameters``, ``max_activation_bytes``)."""


def check_config_bounds(config: Mapping[str, object], source: str) -> None:
    """Refuse a config whose size-like values (`CONFIG_BOUNDS`) are not integers within their bounds, or that lists
    more than `MAX_STYLES` styles (or style names that are not short strings)."""
    styles = config.get("styles")
    if styles is not None and (
        not isinstance(styles, (list, tuple))
        or len(styles) > MAX_STYLES
        or not all(isinstance(name, str) and 0 < len(name) <= 64 for name in styles)
    ):
        raise ValueError(
            f"config.json of {source!r}: `styles` must be a list of at most {MAX_STYLES} style names of 1 to 64 "
            "characters. The checkpoint is broken or not meant for ghibligan."
        )
    for key, bound in CONFIG_BOUNDS.items():
        if key not in config:
            continue
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config.json of {source!r}: `{key}` must be an integer, got {value!r}.")
        if not 0 <= value <= bound:
            raise ValueError(
                f"config.json of {source!r}: `{key}` = {value} is outside the range a ghibligan model accepts "
                f"(0 to {bound}). The checkpoint is broken or not meant for ghibligan."
            )


def build_on_meta(cls: type[nn.Module], config: Mapping[str, object]) -> nn.Module:
    """Build ``cls(**config)`` on the ``meta`` device: every shape is real, no memory is allocated."""
    with torch.device("meta"):
        return cls(**config)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def check_parameter_count(model: nn.Module, max_parameters: int | None, source: str) -> None:
    """Refuse a model with more than ``max_parameters`` parameters (``None``: no limit)."""
    if max_parameters is None:
        return
    count = count_parameters(model)
    if count > max_parameters:
        raise ResourceLimitError(
            f"{source!r} describes a {type(model).__name__} of {count:,} parameters "
            f"({count * 4 / 2**30:.1f} GiB in float32), above `max_parameters` ({max_parameters:,}). "
            f"If you trust this checkpoint, pass a larger `max_parameters` (or None) to load it."
        )


def read_safetensors_shapes(model_file: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, from its header only (no tensor data is read)."""
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"Weights file {str(model_file)!r} does not exist.")
    try:
        with safe_open(model_file, framework="pt") as weights:
            return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"Could not read weights from {str(model_file)!r}: {error}. The file is corrupted or not a safetensors "
            f"file; download or save the checkpoint again."
        ) from error


def check_weights_match(model: nn.Module, model_file: str | os.PathLike, strict: bool = True) -> None:
    """Compare a safetensors header with ``model``'s state dict (which may live on ``meta``): same names (if
    ``strict``) and same shapes, or a ValueError naming what differs."""
    stored = read_safetensors_shapes(model_file)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    problems = []
    if strict:
        missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
        for label, names in (("Missing key(s)", missing), ("Unexpected key(s)", unexpected)):
            if names:
                problems.append(f"{label}: {names[:8]}{' ...' if len(names) > 8 else ''}")
    wrong = [name for name in sorted(expected.keys() & stored.keys()) if expected[name] != stored[name]]
    problems += [
        f"size mismatch for {name}: {list(stored[name])} stored, {list(expected[name])} expected" for name in wrong[:8]
    ]
    if problems:
        raise ValueError(
            f"Weights in {str(model_file)!r} do not match {type(model).__name__} built from its config.json:\n"
            + "\n".join(problems)
        )


class _PeakMemory(TorchDispatchMode):
    """Follows every tensor an operator creates (views excluded) until it is freed; ``peak`` is the most alive."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if not func.is_view:
            for tensor in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(tensor, torch.Tensor):
                    nbytes = tensor.numel() * tensor.element_size()
                    self.live += nbytes
                    weakref.finalize(tensor, self._free, nbytes)
            self.peak = max(self.peak, self.live)
        return output


def estimate_activation_bytes(
    meta_model: nn.Module, height: int, width: int, batch_size: int = 1, dtype: torch.dtype = torch.float32
) -> int:
    """Peak memory of the tensors one inference pass of ``meta_model`` (a model on the ``meta`` device, see
    `build_on_meta`) creates for a (batch_size, C, height, width) input, input included: the pass is traced on the meta
    device (a few milliseconds, nothing allocated), following each tensor from creation until it is freed. Padding
    inside the model is included; kernel workspaces are not.
    """
    in_channels = next(p for p in meta_model.parameters() if p.dim() == 4).shape[1]  # conv_in: (out, in, k, k)
    with torch.inference_mode(), _PeakMemory() as tracker:
        sample = torch.empty(batch_size, in_channels, height, width, device="meta", dtype=dtype)
        meta_model.to(dtype)(sample)
        del sample
    return tracker.peak
