"""Named model recipes, in one place: the training script, the CLI, the benchmarks and the README all build from here.

A preset is a generator class and the keyword arguments of its ``__init__`` (the same JSON that `save_pretrained`
writes to ``config.json``). `build_generator` starts from a preset and applies overrides:

```py
>>> from ghibligan.models.presets import build_generator
>>> model = build_generator("unet_256", ngf=32)  # pix2pix's unet_256, half as wide
>>> model.config["num_downs"], model.config["ngf"]
(8, 32)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .auto import GENERATOR_CLASSES
from .patchgan import PatchDiscriminator

DEFAULT_GENERATOR_PRESET = "unet_256"


@dataclass(frozen=True)
class GeneratorPreset:
    """A generator recipe: which class, with which ``__init__`` kwargs, and what it is for.

    Args:
        class_name (`str`): ``"UNetGenerator"``, ``"ResNetGenerator"`` or ``"GuidedFilterGenerator"`` (a key of
            `GENERATOR_CLASSES`).
        kwargs (`dict`): JSON-able ``__init__`` kwargs; the class defaults fill in the rest.
        description (`str`): one line for ``--help``, the README and benchmark tables.
    """

    class_name: str
    kwargs: dict[str, Any]
    description: str


GENERATOR_PRESETS: dict[str, GeneratorPreset] = {
    "unet_256": GeneratorPreset(
        "UNetGenerator",
        {"num_downs": 8, "ngf": 64, "norm": "batch", "dropout": 0.5},
        "pix2pix's unet_256: 8 levels, ngf 64, batch norm, dropout 0.5 (54.4 M parameters)",
    ),
    "unet_128": GeneratorPreset(
        "UNetGenerator",
        {"num_downs": 7, "ngf": 64, "norm": "batch", "dropout": 0.5},
        "pix2pix's unet_128: 7 levels, ngf 64, batch norm, dropout 0.5",
    ),
    "attention_unet_512": GeneratorPreset(
        "UNetGenerator",
        {"num_downs": 8, "innermost_kernel": 5, "attention_heads": 8, "up_activation": "leaky_relu"},
        "attention U-Net for 512² inputs: unet_256 with a 5×5 innermost conv, 8-head self-attention on the 2×2 "
        "bottleneck and LeakyReLU in the decoder",
    ),
    "bundled": GeneratorPreset(
        "UNetGenerator",
        {"num_downs": 5, "ngf": 16, "norm": "batch", "dropout": 0.0, "residual": True, "tone_head_channels": 32},
        "the bundled model's architecture: 5-level residual U-Net, ngf 16, 32-wide tone head (1.04 M parameters)",
    ),
    "guided": GeneratorPreset(
        "GuidedFilterGenerator",
        {
            "styles": ["ghibli", "toon", "painterly"],
            "scale_factor": 2,
            "channels": 8,
            "num_levels": 3,
            "num_blocks": 4,
            "tone_channels": 16,
            "upsampler": "joint_bilateral",
            "flatten_iterations": 3,
            "flatten_dilations": [2, 4, 8, 2, 4, 8],
            "photo_detail": True,
            "photo_smoothing": 1,
            "smoothing_eps": 0.003,
            "levels": 6,
            "despeckle": 1,
            "level_space": "lab",
            "surface_gate": True,
        },
        "the bundled three-style model's architecture: a FiLM U-Net at 1/2 resolution, 3 passes of iterated bilateral "
        "flattening then 6 dilated ones (plateaus as wide as the teacher's regions), joint bilateral upsampling "
        "guided by the photo, per-style detail of the photo smoothed at full resolution (a fast guided filter), "
        "per-style tone head, "
        "a full-resolution posterizer in CIE L* (levels estimated per style from the targets) and 3x3 median of L*, "
        "a per-style gate on the network's surface; "
        "styles ghibli, toon, painterly (the --target_column names replace them)",
    ),
    "cartoongan_resnet": GeneratorPreset(
        "ResNetGenerator",
        {"ngf": 64, "n_blocks": 8, "norm": "batch"},
        "CartoonGAN's generator: 2 down blocks, 8 residual blocks at 1/4 resolution, 2 up blocks",
    ),
    "resnet_9blocks": GeneratorPreset(
        "ResNetGenerator",
        {"ngf": 64, "n_blocks": 9, "norm": "batch"},
        "the CartoonGAN ResNet with pix2pix's 9 residual blocks (CartoonGAN's layout, so not weight-compatible "
        "with pix2pix's resnet_9blocks)",
    ),
}


def _preset(name: str) -> GeneratorPreset:
    if name not in GENERATOR_PRESETS:
        raise ValueError(f"Unknown generator preset {name!r}: choose one of {sorted(GENERATOR_PRESETS)}.")
    return GENERATOR_PRESETS[name]


def preset_config(preset: str | None = None, /, **overrides: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The class of ``preset`` (default ``"unet_256"``) and its kwargs updated by ``overrides`` (the class defaults fill
    in the rest; ``build_generator(...).config`` has them all).

    ``None`` values in ``overrides`` are ignored (an unset command-line flag keeps the preset's value). An override
    the class does not take raises a `ValueError` naming it and the keys the class takes.
    """
    recipe = _preset(DEFAULT_GENERATOR_PRESET if preset is None else preset)
    cls = GENERATOR_CLASSES[recipe.class_name]
    overrides = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(overrides) - set(cls.config_keys()))
    if unknown:
        raise ValueError(
            f"{recipe.class_name} (preset {preset or DEFAULT_GENERATOR_PRESET!r}) does not take {unknown}: "
            f"it takes {sorted(cls.config_keys())}."
        )
    return cls, {**recipe.kwargs, **overrides}


def build_generator(preset: str | None = None, /, **overrides: Any) -> nn.Module:
    """Build the generator of ``preset`` (default ``"unet_256"``), its kwargs updated by ``overrides``.

    Args:
        preset (`str`, *optional*): a key of `GENERATOR_PRESETS`.
        **overrides: ``__init__`` kwargs of the preset's class; ``None`` values are ignored.

    Raises:
        `ValueError`: for an unknown preset or a kwarg the preset's class does not take (both named), or an invalid
            value (raised by the model's constructor).
    """
    cls, kwargs = preset_config(preset, **overrides)
    return cls(**kwargs)


def build_discriminator(layout: str = "pix2pix", **kwargs: Any) -> PatchDiscriminator:
    """A `PatchDiscriminator` of ``layout`` as its paper uses it, updated by ``kwargs`` (``None`` values ignored).

    ``"pix2pix"`` is the conditional 70×70 PatchGAN; ``"cartoongan"`` is CartoonGAN's discriminator, unconditional
    (``condition_channels=0``) unless ``kwargs`` say otherwise.
    """
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    unknown = sorted(set(kwargs) - set(PatchDiscriminator.config_keys()))
    if unknown:
        raise ValueError(
            f"PatchDiscriminator does not take {unknown}: it takes {sorted(PatchDiscriminator.config_keys())}."
        )
    if layout == "cartoongan":
        kwargs.setdefault("condition_channels", 0)
    return PatchDiscriminator(layout=layout, **kwargs)
