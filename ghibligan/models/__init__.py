from .auto import GENERATOR_CLASSES, load_generator
from .patchgan import PatchDiscriminator
from .resnet import ResNetGenerator
from .unet import UNetGenerator

__all__ = ["GENERATOR_CLASSES", "PatchDiscriminator", "ResNetGenerator", "UNetGenerator", "load_generator"]
