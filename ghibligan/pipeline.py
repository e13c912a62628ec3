"""`Cartoonizer`: photos in, cartoons out — load → preprocess → (tile) → generate → postprocess → PIL.

Examples:
    ```py
    >>> from PIL import Image
    >>> from ghibligan import Cartoonizer
    >>> cartoonizer = Cartoonizer.from_pretrained()            # the bundled model; or a Hub id / local folder
    >>> cartoons = cartoonizer(["photo.jpg", Image.open("portrait.png")], max_side=1024, smoothing=0.3)
    >>> cartoons[0].save("cartoon.png")
    >>> cartoonizer.styles                                      # a style-conditioned model's styles, else []
    >>> cartoonizer("photo.jpg", style="ghibli")                # one of them (default: the first)
    ```
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .contour_lines import ContourLines, apply_ink, draw_contour_lines, line_surface
from .exposure import brighten, check_exposure_target, darken, exposure_gain
from .image_io import (
    DEFAULT_MAX_PIXELS,
    ImageInput,
    LoadedImage,
    load_image,
    resize_to_max_side,
)
from .models.auto import load_generator
from .models.guided import (
    MAX_WORK_SIDE,
    MIN_WORK_SIDE,
    GuidedFilterGenerator,
    check_contour_lines,
    check_exposure_targets,
    check_joint_upsampling,
    check_work_sides,
    is_work_side,
)
from .models.hub import GhibliganHubMixin
from .models.limits import ResourceLimitError, build_on_meta, estimate_activation_bytes
from .onnx_generator import OnnxGenerator
from .tiling import tiled_apply
from .upsampling import DEFAULT_UPSAMPLING_SIGMA, joint_bilateral_upsample

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_MODEL_NAME = "ghibli-styles"
SMOOTHING_METHODS = ("guided", "bilateral")
BACKENDS = ("torch", "onnxruntime")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_ACTIVATION_BYTES = 16 * 2**30  # one generator pass; the Space sets a lower limit
# Images are tiled automatically when one pass would need more activation memory than this (estimated on the meta
# device). Tiling is for memory only: the tiles' overlap costs time (3840×2160 in 1024² tiles: 1.5× the pixels; the
# bundled model ran 1.2-1.5× and toon-painterly-unet 1.8× slower tiled than in one pass, BENCHMARKS.md). At
# 1 GiB both bundled models run 3840×2160 in one pass in bf16 (0.48 / 0.57 GiB estimated); unet_256 does not.
DEFAULT_AUTO_TILE_BYTES = 2**30
DEFAULT_AUTO_TILE_PIXELS = 2048 * 2048  # the rule for generators whose memory cannot be estimated (ONNX sessions)
ACTIVATION_CACHE_SIZES = 1024  # memory estimates kept per Cartoonizer (one per image size and dtype)
# On CPU, a pass whose activations outgrow the caches costs more per image than one image at a time (bundled model,
# 256² photos: 11.3 ms per image alone, 11.7 / 12.6 / 13.0 / 16.2 in passes of 2 / 3 / 4 / 16); batching pays while it
# amortizes reading the weights (unet_256: 90 ms alone, 78 in passes of 4-16). So a CPU pass holds at most
# max(CPU_PASS_MIN_BYTES, CPU_PASS_WEIGHT_MULTIPLE × weight bytes) of estimated activations (bench_inference.py).
CPU_PASS_MIN_BYTES = 8 * 2**20
CPU_PASS_WEIGHT_MULTIPLE = 4


def default_device() -> torch.device:
    """CUDA if present, then Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def has_native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere PyTorch emulates it, slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def auto_dtype(device: str | torch.device) -> torch.dtype:
    """The fastest precision that is safe on ``device``: bf16 on CUDA GPUs and CPUs that support it natively, else
    fp16 on older CUDA GPUs, else fp32 (MPS and CPUs without native bf16)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and has_native_bf16_cpu():
        return torch.bfloat16
    return torch.float32


def bundled_model_path(name: str = DEFAULT_MODEL_NAME) -> Path:
    """Folder of a checkpoint shipped inside the package (``ghibligan/pretrained/<name>``)."""
    path = PRETRAINED_DIR / name
    if not (path / "config.json").is_file():
        available = sorted(p.name for p in PRETRAINED_DIR.glob("*") if (p / "config.json").is_file())
        raise FileNotFoundError(
            f"No bundled model {name!r} in this install (bundled: {available or 'none'}). "
            f"Pass a checkpoint folder or Hub repo id instead."
        )
    return path


def _smoothing_filter(strength: float, method: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """The filter for ``strength`` / ``method``, and how far (pixels) an output pixel's inputs reach."""
    if method == "guided":
        radius = 1 + round(6 * strength)
        eps = (0.02 + 0.15 * strength) ** 2 * 255**2
        return (lambda rgb: cv2.ximgproc.guidedFilter(rgb, rgb, radius, eps)), 2 * radius  # two box filters
    diameter = 5 + 2 * round(3 * strength)
    return (lambda rgb: cv2.bilateralFilter(rgb, d=diameter, sigmaColor=20 + 100 * strength, sigmaSpace=7)), diameter


def smooth(image: np.ndarray, strength: float, method: str = "guided", strip_pixels: int = 4_000_000) -> np.ndarray:
    """Edge-preserving smoothing of a uint8 RGB image; ``strength`` in [0, 1] (0 leaves it unchanged).

    ``"guided"`` is the guided filter (He et al.) with the image as its own guide: it flattens texture while keeping
    edges, and is the filter White-box Cartoonization uses for its surface. ``"bilateral"`` is cv2's bilateral filter.
    Large images are filtered in strips of about ``strip_pixels`` pixels with a margin wider than the filter's reach,
    so the result is the same as in one pass while memory stays bounded (the guided filter keeps ~20 float copies).
    """
    if strength <= 0:
        return image
    apply, reach = _smoothing_filter(strength, method)
    height, width = image.shape[:2]
    rows = max(reach + 1, strip_pixels // width)
    if rows >= height:
        return apply(image)
    output = np.empty_like(image)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        start, stop = max(0, top - reach), min(height, bottom + reach)  # the strip and its margins
        output[top:bottom] = apply(np.ascontiguousarray(image[start:stop]))[top - start : bottom - start]
    return output


# On CPU the uint8 conversions run in slices of rows of about this many pixels, each pass over a slice in cache
# (3840×2160: 52 → 32 ms in, 87 → 24 ms out); on accelerators in one pass (one kernel each)
CONVERSION_SLICE_PIXELS = 65536


def _conversion_rows(images: torch.Tensor, height: int, width: int) -> int:
    """Rows per slice of the uint8 conversions: all of them off the CPU."""
    return height if images.device.type != "cpu" else max(1, CONVERSION_SLICE_PIXELS // max(1, width))


def uint8_to_model_input(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) in [-1, 1] of ``dtype``, on the same device, channels-last. Normalized in
    float32, as `pil_to_tensor` does, then cast."""
    batch, height, width, channels = images.shape
    rows = _conversion_rows(images, height, width)
    if rows >= height:  # channels-last: a view of the permuted pixels, no copy of the layout
        return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).to(dtype)
    out = torch.empty(batch, height, width, channels, dtype=dtype, device=images.device).permute(0, 3, 1, 2)
    for start in range(0, height, rows):
        part = images[:, start : start + rows].permute(0, 3, 1, 2)
        out[:, :, start : start + rows] = part.float().div_(127.5).sub_(1.0)
    return out


def model_output_to_uint8(output: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8 on the same device, rounded as `tensor_to_uint8` does."""
    batch, channels, height, width = output.shape
    rows = _conversion_rows(output, height, width)
    if rows >= height:
        pixels = output.float().clamp(-1, 1).add_(1).mul_(127.5).round_()
        return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    out = torch.empty(batch, height, width, channels, dtype=torch.uint8, device=output.device)
    for start in range(0, height, rows):
        pixels = output[:, :, start : start + rows].float().clamp_(-1, 1).add_(1).mul_(127.5).round_()
        out[:, start : start + rows] = pixels.to(torch.uint8).permute(0, 2, 3, 1)
    return out


class Cartoonizer:
    r"""Turn photos into cartoons with a ghibligan generator.

    Args:
        generator (`nn.Module` or `OnnxGenerator`): a `UNetGenerator`, `ResNetGenerator` or style-conditioned
            `GuidedFilterGenerator` (images in [-1, 1] → [-1, 1]), or its ONNX export run by onnxruntime
            (`ghibligan.onnx_generator.OnnxGenerator`).
        device (`str` or `torch.device`, *optional*): defaults to CUDA, then MPS, then CPU (for an `OnnxGenerator`:
            the device its session runs on, the CPU unless it was made for ``"cuda"``).
        dtype (`torch.dtype` or `str`, *optional*, defaults to `"auto"`): the fastest safe precision for the device
            (see `auto_dtype`: bf16 on CUDA GPUs and CPUs with native bf16, else float32; float32 for an
            `OnnxGenerator`). Pass ``"float32"`` (or ``torch.float32``) for full precision everywhere, or
            ``"bfloat16"`` / ``"float16"``.
        tile_size (`int`, *optional*, defaults to 1024): tile side of automatic tiling.
        auto_tile_bytes (`int`, *optional*, defaults to 1 GiB): an image is tiled automatically when one generator
            pass over it is estimated to need more activation memory than this (`activation_bytes`).
        auto_tile_pixels (`int`, *optional*): tile images with more pixels than this instead, whatever their memory;
            also the rule for generators whose memory cannot be estimated (an `OnnxGenerator`: 2048² by default).
    """

    def __init__(
        self,
        generator: nn.Module | OnnxGenerator,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = "auto",
        tile_size: int = 1024,
        auto_tile_bytes: int = DEFAULT_AUTO_TILE_BYTES,
        auto_tile_pixels: int | None = None,
    ):
        for name, value in (("tile_size", tile_size), ("auto_tile_bytes", auto_tile_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if auto_tile_pixels is not None and (not isinstance(auto_tile_pixels, int) or auto_tile_pixels < 1):
            raise ValueError(f"`auto_tile_pixels` must be a positive integer or None, got {auto_tile_pixels!r}.")
        self.generator = generator.eval()
        # the styles drawn at a fixed long side (the model's config, which may not be trusted: checked here)
        self.work_sides = check_work_sides(getattr(generator, "work_sides", None), self.styles)
        # the styles that draw a dark photo at a normal exposure (`ghibligan.exposure`), checked the same way
        self.exposure_targets = check_exposure_targets(getattr(generator, "exposure_targets", None), self.styles)
        # the styles whose teacher inks the photo's edges at the photo's size (`ghibligan.contour_lines`): drawn here
        self.contour_lines = {  # (checked and completed by check_contour_lines)
            name: ContourLines(**settings)
            for name, settings in check_contour_lines(getattr(generator, "contour_lines", None), self.styles).items()
        }
        # the styles drawn at a work side whose cartoon is upsampled edge-aware (`ghibligan.upsampling`), checked too
        self.joint_upsampling = check_joint_upsampling(getattr(generator, "joint_upsampling", None), self.styles)
        self.tile_size = tile_size
        self.auto_tile_bytes = auto_tile_bytes
        self.auto_tile_pixels = auto_tile_pixels
        self._meta_generator: nn.Module | None = None  # shapes only, to estimate memory (see `activation_bytes`)
        self._activation_bytes: dict[tuple, int] = {}
        self._progress_bar_config: dict = {}
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        if device is None:  # an OnnxGenerator keeps the device its session was made for (CPU unless told otherwise)
            device = generator.device if isinstance(generator, OnnxGenerator) else default_device()
        self.to(device, dtype)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = "auto",
        tile_size: int = 1024,
        auto_tile_bytes: int = DEFAULT_AUTO_TILE_BYTES,
        auto_tile_pixels: int | None = None,
        backend: str = "torch",
        **kwargs,
    ) -> Cartoonizer:
        """Load a generator checkpoint: ``None`` (the bundled model), a local folder or a Hub repo id.

        The generator class (U-Net, ResNet, guided filter) is read from the checkpoint's config; ``dtype`` defaults to
        ``"auto"`` (see `Cartoonizer`). ``kwargs`` go to
        `from_pretrained` of that class (``revision``, ``cache_dir``, ``token``, ``local_files_only``, ...).
        ``backend="onnxruntime"`` runs the checkpoint's ``model.onnx`` with onnxruntime instead (float32; a checkpoint
        without one is exported once and cached, see `ghibligan.onnx_generator.load_onnx_generator`).
        """
        path = bundled_model_path() if pretrained_model_name_or_path is None else pretrained_model_name_or_path
        if backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {list(BACKENDS)}, got {backend!r}.")
        if backend == "onnxruntime":
            from .onnx_generator import load_onnx_generator

            generator = load_onnx_generator(path, **kwargs)
        else:
            generator = load_generator(path, **kwargs)
        return cls(
            generator,
            device=device,
            dtype=dtype,
            tile_size=tile_size,
            auto_tile_bytes=auto_tile_bytes,
            auto_tile_pixels=auto_tile_pixels,
        )

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> Cartoonizer:
        """Move the generator to ``device`` and/or cast it to ``dtype``; returns self."""
        device = torch.device(device) if device is not None else self.device
        if dtype == "auto":
            dtype = torch.float32 if isinstance(self.generator, OnnxGenerator) else auto_dtype(device)
        elif isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"`dtype` must be 'auto' or one of {list(DTYPES)}, got {dtype!r}.")
            dtype = DTYPES[dtype]
        self.device = device
        self.dtype = dtype or self.dtype
        memory_format = torch.channels_last if self.device.type != "mps" else torch.contiguous_format
        self.generator.to(device=self.device, dtype=self.dtype, memory_format=memory_format)
        return self

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype photos are handed to the generator in: its own, except for a `GuidedFilterGenerator` on the CPU,
        whose full-resolution stages compute in float32 whatever its dtype (its network casts what it needs), so that
        a bf16 model is spared a bf16 round trip of the full-resolution photo and of its output."""
        if isinstance(self.generator, GuidedFilterGenerator) and self.device.type == "cpu":
            return torch.float32
        return self.dtype

    def set_progress_bar_config(self, **kwargs) -> None:
        """Options for the tqdm bar shown over several images, e.g. ``disable=True``."""
        self._progress_bar_config = kwargs

    @property
    def size_multiple(self) -> int:
        return int(getattr(self.generator, "size_multiple", 1))

    @property
    def styles(self) -> list[str]:
        """The style names of a style-conditioned generator, in index order; ``[]`` for a model without styles."""
        return list(getattr(self.generator, "styles", None) or [])

    def style_index(self, style: str | int | None) -> int | None:
        """A style name or index → its index in `styles`; ``None`` → ``None`` (the model's first style, or no style).

        Raises:
            ValueError: naming ``style`` and listing the model's styles (or saying it has none).
        """
        if style is None:
            return None
        styles = self.styles
        if not styles:
            raise ValueError(
                f"`style` {style!r} was given, but this model has no styles (styles: none); leave it unset."
            )
        if isinstance(style, str) and style in styles:
            return styles.index(style)
        if isinstance(style, int) and not isinstance(style, bool) and 0 <= style < len(styles):
            return style
        raise ValueError(
            f"`style` {style!r} is not one of this model's styles {styles} (a name, or an index from 0 to "
            f"{len(styles) - 1})."
        )

    @staticmethod
    def check_work_side(work_side: int | None) -> None:
        """Raise a `ValueError` unless ``work_side`` is None, 0 or a long side in [64, 16384] pixels."""
        zero = isinstance(work_side, int) and not isinstance(work_side, bool) and work_side == 0
        if work_side is not None and not (zero or is_work_side(work_side)):
            raise ValueError(
                f"`work_side` must be None (the model's choice for the style), 0 (the photo's own size) or an integer "
                f"in [{MIN_WORK_SIDE}, {MAX_WORK_SIDE}], got {work_side!r}."
            )

    def work_side(self, style: str | int | None = None, work_side: int | None = None) -> int | None:
        """The long side a photo larger than it is drawn at in ``style`` (a name or an index; None: the first or only
        style), or None for the photo's own size: ``work_side`` if given (0: the photo's own size), else the model's
        `work_sides` entry for the style. Raises a `ValueError` for an unknown style or a bad ``work_side``."""
        self.check_work_side(work_side)
        choice = self._model_choice(self.work_sides, style)
        return choice if work_side is None else (work_side or None)

    def exposure_target(self, style: str | int | None = None, exposure_target: float | None = None) -> float:
        """The 99th-percentile luminance (linear light) a darker photo is brightened to before it is drawn in
        ``style`` (`ghibligan.exposure`), 0 for none: ``exposure_target`` if given, else the model's
        `exposure_targets` entry for the style. Raises a `ValueError` for an unknown style or a bad target."""
        if exposure_target is not None:
            try:
                exposure_target = check_exposure_target(exposure_target)
            except ValueError:
                raise ValueError(
                    f"`exposure_target` must be None (the model's choice for the style), 0 (off) or a luminance in "
                    f"(0, 1], got {exposure_target!r}."
                ) from None
        choice = self._model_choice(self.exposure_targets, style, 0.0)
        return choice if exposure_target is None else exposure_target

    def line_settings(self, style: str | int | None = None, contour_lines: bool | None = None) -> ContourLines | None:
        """The contour lines drawn on a cartoon in ``style`` (`ghibligan.contour_lines`), None for none: with
        ``contour_lines`` None, the model's `contour_lines` entry for the style; False, none; True, that entry or, for
        a style without one, the toon teacher's lines (`ContourLines()`). Raises a `ValueError` for an unknown style
        or a ``contour_lines`` that is not None or a bool."""
        return self._switched_choice("contour_lines", contour_lines, self.contour_lines, style, ContourLines())

    def upsampling_sigma(self, style: str | int | None = None, joint_upsampling: bool | None = None) -> float | None:
        """The range σ (grey levels) of the joint bilateral upsampling that brings a cartoon drawn at a work side in
        ``style`` to the photo's size (`ghibligan.upsampling`), None for bilinear: with ``joint_upsampling`` None,
        the model's `joint_upsampling` entry for the style; False, bilinear; True, that entry or, for a style without
        one, `DEFAULT_UPSAMPLING_SIGMA`. Raises a `ValueError` for an unknown style or a ``joint_upsampling`` that is
        not None or a bool."""
        return self._switched_choice(
            "joint_upsampling", joint_upsampling, self.joint_upsampling, style, DEFAULT_UPSAMPLING_SIGMA
        )

    def _switched_choice(self, name: str, switch: bool | None, choices: dict, style: str | int | None, default):
        """A per-style pipeline stage a caller can switch: with ``switch`` None the model's ``choices`` entry for
        ``style`` (None: not drawn); False, None; True, that entry or, for a style without one, ``default``. A
        `ValueError` for a ``switch`` that is not None or a bool (``name`` says which argument) or an unknown style."""
        if switch is not None and not isinstance(switch, bool):
            raise ValueError(
                f"`{name}` must be None (the model's choice for the style), True or False, got {switch!r}."
            )
        choice = self._model_choice(choices, style)
        if switch is None:
            return choice
        return (choice or default) if switch else None

    @staticmethod
    def _upsample(
        cartoon: np.ndarray, size: tuple[int, int], photo: np.ndarray | None, smoothed: np.ndarray | None,
        sigma: float | None,
    ) -> np.ndarray:  # fmt: skip
        """A cartoon drawn at the work side → ``size`` (width, height): bilinear, as the ghibli teacher upsamples
        (``sigma`` None), else joint bilateral upsampling guided by the photo, or by its smoothed copy where the line
        stage made one at this size (the photo's fine texture then does not fray the borders)."""
        if sigma is None:
            return cv2.resize(cartoon, size, interpolation=cv2.INTER_LINEAR)
        guide = smoothed if smoothed is not None and smoothed.shape == photo.shape else photo
        guide_low = cv2.resize(guide, (cartoon.shape[1], cartoon.shape[0]), interpolation=cv2.INTER_AREA)
        return joint_bilateral_upsample(cartoon, guide_low, guide, sigma)

    def _model_choice(self, choices: dict, style: str | int | None, default=None):
        """The model's per-style metadata ``choices`` (`work_sides`, ...) for ``style`` (a name, an index or None:
        the first style), ``default`` for a style it does not name or a model without styles; a `ValueError` for an
        unknown style."""
        index = self.style_index(style)
        styles = self.styles
        return choices.get(styles[index or 0], default) if styles else default

    def check_inputs(
        self, max_side, tile, tile_overlap, smoothing, smoothing_method, batch_size, tile_batch_size=None
    ) -> None:
        if max_side is not None and (not isinstance(max_side, int) or max_side < 16):
            raise ValueError(f"`max_side` must be an integer >= 16 or None, got {max_side!r}.")
        if tile is not None and (not isinstance(tile, int) or (tile != 0 and tile < 2 * tile_overlap + 16)):
            raise ValueError(f"`tile` must be 0 (no tiling), None (automatic) or > 2 * tile_overlap, got {tile!r}.")
        if not isinstance(tile_overlap, int) or tile_overlap < 0:
            raise ValueError(f"`tile_overlap` must be an integer >= 0, got {tile_overlap!r}.")
        if smoothing is not None and not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"`smoothing` must be in [0, 1] or None, got {smoothing!r}.")
        if smoothing_method not in SMOOTHING_METHODS:
            raise ValueError(f"`smoothing_method` must be one of {list(SMOOTHING_METHODS)}, got {smoothing_method!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        if tile_batch_size is not None and (not isinstance(tile_batch_size, int) or tile_batch_size < 1):
            raise ValueError(f"`tile_batch_size` must be an integer >= 1 or None, got {tile_batch_size!r}.")

    @property
    def can_posterize(self) -> bool:
        """Whether the model has a posterizer whose strength ``posterize`` can set."""
        return getattr(self.generator, "level_quantizer", None) is not None

    def check_posterize(self, posterize: float | None) -> None:
        """Refuse a ``posterize`` that is not None or a number in [0, 1], or that this model cannot take."""
        if posterize is None:
            return
        if isinstance(posterize, bool) or not isinstance(posterize, (int, float)) or not 0.0 <= posterize <= 1.0:
            raise ValueError(f"`posterize` must be a number in [0, 1] or None, got {posterize!r}.")
        if not self.can_posterize:
            raise ValueError(
                "`posterize` needs a model with a posterizer (a GuidedFilterGenerator built with `levels`, such "
                f"as the bundled model); {type(self.generator).__name__} has none."
            )

    def activation_bytes(self, height: int, width: int) -> int | None:
        """Estimated peak memory of one generator pass on a (1, 3, height, width) input, traced on the meta device
        (`ghibligan.models.limits.estimate_activation_bytes`); ``None`` for a generator without a ghibligan config."""
        if not isinstance(self.generator, GhibliganHubMixin):  # e.g. an onnxruntime session: not traceable on meta
            return None
        config = self.generator.config
        key = (height, width, self.dtype)
        if key not in self._activation_bytes:
            if self._meta_generator is None:
                self._meta_generator = build_on_meta(type(self.generator), config).eval()
            estimate = estimate_activation_bytes(self._meta_generator, height, width, dtype=self.dtype)
            if len(self._activation_bytes) >= ACTIVATION_CACHE_SIZES:  # a public Space sees endless sizes
                self._activation_bytes.pop(next(iter(self._activation_bytes)))  # the oldest
            self._activation_bytes[key] = estimate
        return self._activation_bytes[key]

    def cpu_pass_images(self, height: int, width: int) -> int | None:
        """On CPU, the most (height, width) images one generator pass should hold for the per-image cost not to grow
        (see `CPU_PASS_MIN_BYTES`); ``None`` on accelerators or where `activation_bytes` cannot estimate."""
        needed = self.activation_bytes(height, width) if self.device.type == "cpu" else None
        if not needed:
            return None
        weight_bytes = sum(p.numel() * p.element_size() for p in self.generator.parameters())
        return max(1, max(CPU_PASS_MIN_BYTES, CPU_PASS_WEIGHT_MULTIPLE * weight_bytes) // needed)

    def _check_memory(self, height: int, width: int, max_activation_bytes: int | None) -> int:
        """How many (height, width) inputs fit in one pass under ``max_activation_bytes`` (0: no limit); raises if
        not even one does."""
        needed = self.activation_bytes(height, width) if max_activation_bytes is not None else None
        if not needed:
            return 0
        if needed > max_activation_bytes:
            raise ResourceLimitError(
                f"A {width}x{height} pass of this model needs about {needed / 2**30:.1f} GiB, above "
                f"`max_activation_bytes` ({max_activation_bytes / 2**30:.1f} GiB). Pass a smaller `max_side` or "
                f"`tile`, or raise `max_activation_bytes` if this machine has the memory."
            )
        return max(1, max_activation_bytes // needed)

    def _generate(
        self,
        batch: torch.Tensor,
        style: int | None = None,
        posterize: float | None = None,
        photo_side: int | None = None,
    ) -> torch.Tensor:
        """(B, 3, H, W) float in [-1, 1] on any device, a style index or None, a posterizer strength or None →
        (B, 3, H, W) in [-1, 1], left on the device (the one place the generator runs). ``photo_side``: the whole
        photo's long side where ``batch`` holds tiles of it, for a generator whose drawing depends on the photo's size
        (`GuidedFilterGenerator`'s ``photo_side``); others (an ONNX graph) see the tile's size."""
        batch = batch.to(self.device, self.input_dtype).contiguous(memory_format=torch.channels_last)
        styles = None  # style-less models take no style; style models use their first
        if style is not None:
            styles = torch.full((batch.shape[0],), style, dtype=torch.long, device=batch.device)
        options = {}
        if posterize is not None:
            options["posterize"] = torch.full((batch.shape[0],), float(posterize), device=batch.device)  # (B,)
        if photo_side is not None and isinstance(self.generator, GuidedFilterGenerator):
            options["photo_side"] = photo_side
        if options:
            return self.generator(batch, styles, **options)
        return self.generator(batch) if styles is None else self.generator(batch, styles)

    # -- the batched uint8 path: one H2D copy of uint8, pre/post-processing on the device, one D2H copy of uint8 --

    def _upload_uint8(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 (numpy or tensor, any device) → the same on ``self.device``, in one (pinned, async on
        CUDA) copy."""
        if isinstance(images, np.ndarray):
            with warnings.catch_warnings():  # read-only arrays (np.asarray of a PIL image): only ever read from
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                images = torch.from_numpy(np.ascontiguousarray(images))
        tensor = images
        if tensor.device == self.device:
            return tensor
        if self.device.type == "cuda" and tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    @torch.inference_mode()  # public: no autograd graph (and the fused CPU kernels) for direct callers too
    def generate_uint8(
        self,
        images: np.ndarray | torch.Tensor,
        batch_size: int = 16,
        style: int | None = None,
        posterize: float | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Cartoonize a stack of equal-sized images, uint8 in and uint8 out, with no PIL on the way. They are drawn at
        their own size: the model's `work_sides` are `__call__`'s.

        Args:
            images (`np.ndarray` or `torch.Tensor`): (B, H, W, 3) uint8 RGB; a tensor may already be on the device.
            batch_size (`int`, *optional*, defaults to 16): images per generator pass (on CPU at most
                `cpu_pass_images`, where larger passes cost more per image).
            style (`int`, *optional*): a style index (`style_index`) for a style-conditioned model.
            posterize (`float`, *optional*): the posterizer's strength in [0, 1] (see `__call__`).

        Returns:
            (B, H, W, 3) uint8: a numpy array for numpy input, else a tensor on ``images``' device.
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype not in (np.uint8, torch.uint8):
            raise ValueError(
                f"`images` must be a (B, H, W, 3) uint8 array or tensor, got shape {tuple(images.shape)} of "
                f"{images.dtype}."
            )
        self.check_posterize(posterize)
        batch_size = min(batch_size, self.cpu_pass_images(*images.shape[1:3]) or batch_size)
        outputs = []
        for start in range(0, len(images), batch_size):
            pixels = self._upload_uint8(images[start : start + batch_size])  # (b, H, W, 3) uint8 on the device
            batch = uint8_to_model_input(pixels, self.input_dtype)  # (b, 3, H, W)
            generated = self._generate(batch, style, posterize)  # (b, 3, H, W)
            outputs.append(model_output_to_uint8(generated))  # (b, H, W, 3) uint8 on the device
        result = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        if isinstance(images, np.ndarray):
            return result.cpu().numpy()
        return result.to(images.device)

    @torch.inference_mode()
    def generate_uint8_tiled(
        self,
        image: np.ndarray,
        tile: int,
        overlap: int,
        tile_batch_size: int,
        style: int | None = None,
        posterize: float | None = None,
    ) -> np.ndarray:
        """One (H, W, 3) uint8 image in overlapping ``tile`` squares, ``tile_batch_size`` tiles per generator pass,
        blended on the device (`ghibligan.tiling.tiled_apply`), every tile in ``style``; returns (H, W, 3) uint8 on
        the CPU."""
        generate = functools.partial(self._generate, style=style, posterize=posterize, photo_side=max(image.shape[:2]))
        pixels = uint8_to_model_input(self._upload_uint8(image[None]), torch.float32)[0]  # (3, H, W) on the device
        result = tiled_apply(generate, pixels, tile, overlap, batch_size=tile_batch_size)  # (3, H, W) float32
        return model_output_to_uint8(result[None])[0].cpu().numpy()

    def _tile_batch_size(self, tile_batch_size: int | None) -> int:
        """Tiles per pass: as given, else 1 on CPU (batching gains nothing there; bounded memory is what tiling is
        for) and 8 on accelerators (one launch for most photos)."""
        if tile_batch_size is not None:
            return tile_batch_size
        return 1 if self.device.type == "cpu" else 8

    def _tile_side(self, height: int, width: int, tile: int | None) -> int:
        """Tile side to use for this image, or 0 for a single pass: ``tile`` if given, else `tile_size` where one
        pass would need more than `auto_tile_bytes` (or the image has more than `auto_tile_pixels`)."""
        if tile is not None:
            return tile if tile and max(height, width) > tile else 0
        if max(height, width) <= self.tile_size:
            return 0
        needed = self.activation_bytes(height, width) if self.auto_tile_pixels is None else None
        if needed is None:
            return self.tile_size if height * width > (self.auto_tile_pixels or DEFAULT_AUTO_TILE_PIXELS) else 0
        return self.tile_size if needed > self.auto_tile_bytes else 0

    @torch.inference_mode()
    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        style: str | int | None = None,
        max_side: int | None = None,
        tile: int | None = None,
        tile_overlap: int = 64,
        smoothing: float | None = None,
        smoothing_method: str = "guided",
        batch_size: int = 4,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_activation_bytes: int | None = DEFAULT_MAX_ACTIVATION_BYTES,
        tile_batch_size: int | None = None,
        posterize: float | None = None,
        work_side: int | None = None,
        exposure_target: float | None = None,
        contour_lines: bool | None = None,
        joint_upsampling: bool | None = None,
    ) -> list[Image.Image]:
        r"""Cartoonize one image or a list of them.

        Args:
            images: paths, PIL images or numpy arrays (HxW[x1|3|4], uint8 / uint16 / float in [0, 1]), or a list;
                a `LoadedImage` (decoded already, e.g. in a background thread) is used as it is.
            style (`str` or `int`, *optional*): for a style-conditioned model, one of `styles` (a name or an index);
                defaults to its first style. A model without styles takes none.
            max_side (`int`, *optional*): downscale so the longer side is at most this (never upscales).
            tile (`int`, *optional*): tile side for tiled inference; ``None`` tiles in `tile_size` squares where one
                pass would need more than `auto_tile_bytes` of memory (see `Cartoonizer`), ``0`` never tiles.
            tile_overlap (`int`, *optional*, defaults to 64): overlap between tiles, blended linearly.
            smoothing (`float`, *optional*): edge-preserving smoothing of the output, strength in [0, 1].
            smoothing_method (`str`, *optional*, defaults to `"guided"`): ``"guided"`` or ``"bilateral"``.
            batch_size (`int`, *optional*, defaults to 4): equal-sized images run together, uint8 in and out of the
                device (one copy each way; normalization on the device).
            max_pixels (`int`, *optional*): refuse larger files before decoding them (decompression bombs).
            max_activation_bytes (`int`, *optional*, defaults to 16 GiB): refuse an image (or tile) whose generator
                pass is estimated to need more memory than this (see `activation_bytes`); batches shrink to fit.
                ``None``: no limit.
            tile_batch_size (`int`, *optional*): tiles of one large image run together, at most this many per pass
                (and no more than ``max_activation_bytes`` allows); defaults to 1 on CPU and 8 on accelerators.
            posterize (`float`, *optional*): for a model with a posterizer (`can_posterize`, e.g. the bundled
                one), how hard its luminance levels are, in [0, 1]: 0 none, 1 flat levels with sharp borders (flatter
                than the teacher, further from it); ``None`` keeps the strength the model learned for the style (the
                bundled model's `toon` 0.65, `painterly` 0.48, `ghibli` 0).
            work_side (`int`, *optional*): draw photos whose long side is larger than this at this side and upsample
                the cartoon (bilinear) to the photo's size. ``None`` (default) takes the model's choice for the style
                (`work_sides`: the bundled model draws `ghibli` and `toon` at 512 px, the resolution their teachers'
                look is defined at, and `painterly` at the photo's size), ``0`` draws every photo at its own size.
            exposure_target (`float`, *optional*): brighten a photo whose 99th-percentile luminance (linear light,
                0-1) is below this to it (at most 4x in the shadows, highlights rolled off), draw it, and darken the
                cartoon back by the inverse curve (`ghibligan.exposure`). ``None`` (default) takes the model's choice
                for the style (`exposure_targets`: the bundled model's `ghibli` 0.39, as its teacher, whose regions
                would merge into a few grey ones on a dark photo), ``0`` draws every photo at its own exposure.
            contour_lines (`bool`, *optional*): ink the edges of the photo on the cartoon, at the photo's size, with
                the toon teacher's line algorithm (`ghibligan.contour_lines`), after any upsampling from the work side.
                ``None`` (default) takes the model's choice for the style (`contour_lines`: the bundled model's `toon`,
                as its teacher, whose one-pixel lines a model drawn at 512 px cannot place on a larger photo),
                ``False`` draws none, ``True`` draws them in any style.
            joint_upsampling (`bool`, *optional*): bring a cartoon drawn at the work side to the photo's size by
                joint bilateral upsampling guided by the photo (`ghibligan.upsampling`: borders as crisp as the
                photo's edges) instead of bilinear. ``None`` (default) takes the model's choice for the style
                (`joint_upsampling`: the bundled model's `toon`, whose teacher draws crisp levels at the photo's size;
                `ghibli` stays bilinear, as its teacher upsamples its 512-px painting), ``True`` upsamples any style
                so, ``False`` none.

        Returns:
            `list[PIL.Image.Image]`: one cartoon per input, at the (possibly ``max_side``-reduced) input size, RGBA
            where the input had alpha.
        """
        self.check_inputs(max_side, tile, tile_overlap, smoothing, smoothing_method, batch_size, tile_batch_size)
        self.check_posterize(posterize)
        style_index = self.style_index(style)
        work_side = self.work_side(style_index, work_side)
        exposure_target = self.exposure_target(style_index, exposure_target)
        lines = self.line_settings(style_index, contour_lines)
        sigma = self.upsampling_sigma(style_index, joint_upsampling)
        single = not isinstance(images, (list, tuple))
        inputs = [images] if single else list(images)
        loaded: list[LoadedImage] = [
            image if isinstance(image, LoadedImage) else load_image(image, max_pixels=max_pixels) for image in inputs
        ]

        outputs: list[np.ndarray | None] = [None] * len(loaded)
        pending: dict[tuple[int, int], list[int]] = {}  # size → indices of untiled images, batched together
        rgbs = [resize_to_max_side(item.rgb, max_side) for item in loaded]  # the cartoons' sizes
        drawn = [resize_to_max_side(rgb, work_side) for rgb in rgbs]  # what the generator sees
        # 1: exposed well enough, or a style without a target (no copy of the image to find that out)
        gains = [exposure_gain(np.asarray(rgb), exposure_target) if exposure_target else 1.0 for rgb in drawn]
        drawn = [
            rgb if gain == 1 else Image.fromarray(brighten(np.asarray(rgb), gain))
            for rgb, gain in zip(drawn, gains, strict=True)
        ]
        tile_sides = [self._tile_side(rgb.height, rgb.width, tile) for rgb in drawn]
        fitting: dict[tuple[int, int], int] = {}  # pass shape → how many fit in memory at once; refuse before work
        for rgb, side in zip(drawn, tile_sides, strict=True):
            shape = (min(side, rgb.height), min(side, rgb.width)) if side else (rgb.height, rgb.width)
            fitting[shape] = self._check_memory(*shape, max_activation_bytes)
        progress = tqdm(total=len(loaded), **{"disable": len(loaded) < 2, **self._progress_bar_config})
        tile_batch_size = self._tile_batch_size(tile_batch_size)
        for index, (rgb, tile_side) in enumerate(zip(drawn, tile_sides, strict=True)):
            width, height = rgb.size
            if tile_side:
                shape = (min(tile_side, height), min(tile_side, width))
                tiles = min(tile_batch_size, fitting[shape] or tile_batch_size)
                outputs[index] = self.generate_uint8_tiled(
                    np.asarray(rgb), tile_side, tile_overlap, tiles, style=style_index, posterize=posterize
                )
                progress.update()
            else:
                pending.setdefault((height, width), []).append(index)
        for (height, width), indices in pending.items():
            size = min(batch_size, fitting[height, width] or batch_size)
            for start in range(0, len(indices), size):
                chunk = indices[start : start + size]
                batch = np.stack([np.asarray(drawn[i]) for i in chunk])  # (B, H, W, 3) uint8
                for i, result in zip(
                    chunk,
                    self.generate_uint8(batch, batch_size=size, style=style_index, posterize=posterize),
                    strict=True,
                ):
                    outputs[i] = result
                progress.update(len(chunk))
        progress.close()

        cartoons = []
        for item, rgb, array, gain in zip(loaded, rgbs, outputs, gains, strict=True):
            upsampled = array.shape[:2] != (rgb.height, rgb.width)  # drawn at the work side
            photo = smoothed = None
            if lines is not None or (upsampled and sigma is not None):  # the photo at the cartoon's size and exposure
                photo = brighten(np.asarray(rgb), gain)
            if lines is not None:  # the toon teacher's smoothing, for its lines (and the upsampling's guide)
                smoothed = line_surface(photo, lines)
            if upsampled:
                array = self._upsample(array, rgb.size, photo, smoothed, sigma)
            if lines is not None:  # the teacher's ink, found in the photo at the cartoon's size (and exposure)
                array = apply_ink(array, draw_contour_lines(photo, lines, smoothed=smoothed), lines.line_strength)
            array = darken(array, gain)  # back to the photo's own exposure, after the upsampling as the teacher
            if smoothing:
                array = smooth(array, smoothing, smoothing_method)
            cartoon = Image.fromarray(array, "RGB")
            if item.alpha is not None:
                cartoon.putalpha(item.alpha.resize(rgb.size, Image.Resampling.LANCZOS))
            cartoons.append(cartoon)
        return cartoons
