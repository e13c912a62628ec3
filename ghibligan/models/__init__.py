from .auto import GENERATOR_CLASSES, load_generator
from .guided import GuidedFilterGenerator
from .patchgan import PatchDiscriminator
from .presets import GENERATOR_PRESETS, GeneratorPreset, build_discriminator, build_generator
from .resnet import ResNetGenerator
from .unet import UNetGenerator

__all__ = [
    "GENERATOR_CLASSES",
    "GENERATOR_PRESETS",
    "GeneratorPreset",
    "GuidedFilterGenerator",
    "PatchDiscriminator",
    "ResNetGenerator",
    "UNetGenerator",
    "build_discriminator",
    "build_generator",
    "load_generator",
]
