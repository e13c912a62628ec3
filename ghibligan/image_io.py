"""Reading real-world images into RGB + optional alpha, and converting between PIL, numpy and tensors.

Real photos arrive rotated by EXIF, in grayscale, palette, CMYK, 16-bit or with alpha, sometimes truncated or absurdly
large. `load_image` turns all of them into an 8-bit RGB `PIL.Image` and keeps the alpha channel aside, or raises
`ImageLoadError` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = str | os.PathLike | Image.Image | np.ndarray

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}  # file types read from folders
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: a 12000×8000 photo passes, a 100000×100000 "bomb" header does not


class ImageLoadError(ValueError):
    """An input could not be read as an image; the message names it and says why."""


@dataclass
class LoadedImage:
    """An 8-bit RGB image, its alpha channel if it had one, and a name to report it by."""

    rgb: Image.Image
    alpha: Image.Image | None
    name: str


def check_uint8_rgb(rgb: np.ndarray, name: str = "") -> None:
    """A `ValueError` unless ``rgb`` is a uint8 RGB array (H, W, 3), what the per-photo stages (exposure, contour
    lines, upsampling) take; ``name`` says which argument in the message."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"expected {f'`{name}` as ' if name else ''}a uint8 RGB array (H, W, 3), got "
            f"{getattr(rgb, 'dtype', type(rgb))} of shape "
            f"{getattr(rgb, 'shape', None)}."
        )


def _to_8bit_rgb(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Any PIL mode → (RGB, alpha or None). 16-bit and float images are rescaled, not clipped."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 1.0 if array.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    alpha = None
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = image.getchannel("A")
    return image.convert("RGB"), alpha


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 array (uint8, uint16, or float in [0, 1]) → PIL image."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"Expected an HxW, HxWx1, HxWx3 or HxWx4 array, got shape {array.shape}.")
    if array.dtype == np.uint16:
        array = (array.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageLoadError(f"Expected a uint8, uint16 or float array, got {array.dtype}.")
    return Image.fromarray(np.ascontiguousarray(array))


def load_image(image: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read a path, PIL image or numpy array into 8-bit RGB with EXIF orientation applied and alpha kept aside.

    Raises:
        ImageLoadError: the file is missing, empty, not an image, truncated, or larger than ``max_pixels``.
    """
    if isinstance(image, np.ndarray):
        rgb, alpha = _to_8bit_rgb(_array_to_pil(image))
        return LoadedImage(rgb, alpha, name=f"array{tuple(image.shape)}")
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or f"PIL.Image({image.mode}, {image.size[0]}x{image.size[1]})"
        return LoadedImage(*_to_8bit_rgb(ImageOps.exif_transpose(image)), name=str(name))
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"Expected a path, PIL.Image or numpy array, got {type(image).__name__}.")

    path = Path(image)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: the file is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # our own limit guards: Pillow's warning would only be noise
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)  # reads the header only
        with opened:
            width, height = opened.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageLoadError(
                    f"{path}: {width}x{height} is {width * height / 1e6:.0f} MP, above the limit of "
                    f"{max_pixels / 1e6:.0f} MP; refusing to decode it (raise max_pixels if it is a real image)."
                )
            opened.load()
            rgb, alpha = _to_8bit_rgb(ImageOps.exif_transpose(opened))
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{path}: refused as a decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(f"{path}: not an image file that Pillow can read.") from error
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageLoadError):
            raise
        raise ImageLoadError(f"{path}: the image is damaged or truncated ({error}).") from error
    return LoadedImage(rgb, alpha, name=str(path))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → float tensor (3, H, W) in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def tensor_to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Float tensor (3, H, W) in [-1, 1] → uint8 array (H, W, 3)."""
    tensor = tensor.detach().float().clamp(-1, 1).add(1).mul(127.5).round()
    return tensor.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def resize_to_max_side(image: Image.Image, max_side: int | None) -> Image.Image:
    """Downscale (never upscale) so the longer side is at most ``max_side``, keeping the aspect ratio."""
    if max_side is None or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
