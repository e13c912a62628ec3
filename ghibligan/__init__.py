"""ghibligan: photo → cartoon image-to-image GANs (Pix2Pix, CartoonGAN) on the Hugging Face Hub.

The public names are imported lazily (PEP 562), so ``import ghibligan`` and ``ghibligan --help`` don't pay for torch.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("ghibligan")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0.dev0"

_EXPORTS = {
    "Cartoonizer": ".pipeline",
    "ImageLoadError": ".image_io",
    "load_image": ".image_io",
    "GuidedFilterGenerator": ".models",
    "PatchDiscriminator": ".models",
    "ResNetGenerator": ".models",
    "UNetGenerator": ".models",
    "load_generator": ".models",
}

if TYPE_CHECKING:
    from .image_io import ImageLoadError, load_image
    from .models import GuidedFilterGenerator, PatchDiscriminator, ResNetGenerator, UNetGenerator, load_generator
    from .pipeline import Cartoonizer


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'ghibligan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Cartoonizer",
    "GuidedFilterGenerator",
    "ImageLoadError",
    "PatchDiscriminator",
    "ResNetGenerator",
    "UNetGenerator",
    "__version__",
    "load_generator",
    "load_image",
]
