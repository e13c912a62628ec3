"""ghibligan: photo → cartoon image-to-image GANs (Pix2Pix, CartoonGAN) on the Hugging Face Hub."""

from importlib.metadata import PackageNotFoundError, version

from .image_io import ImageLoadError, load_image
from .models import PatchDiscriminator, ResNetGenerator, UNetGenerator, load_generator
from .pipeline import Cartoonizer

try:
    __version__ = version("ghibligan")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0.dev0"

__all__ = [
    "Cartoonizer",
    "ImageLoadError",
    "PatchDiscriminator",
    "ResNetGenerator",
    "UNetGenerator",
    "__version__",
    "load_generator",
    "load_image",
]
