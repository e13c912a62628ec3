"""Load any ghibligan generator from a checkpoint, choosing the class its ``config.json`` names."""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from torch import nn

from .guided import GuidedFilterGenerator
from .resnet import ResNetGenerator
from .unet import UNetGenerator

GENERATOR_CLASSES: dict[str, type[nn.Module]] = {
    "UNetGenerator": UNetGenerator,
    "ResNetGenerator": ResNetGenerator,
    "GuidedFilterGenerator": GuidedFilterGenerator,
}


MAX_CONFIG_BYTES = 1_000_000  # a ghibligan config.json is a few hundred bytes


def generator_class_for(pretrained_model_name_or_path: str | os.PathLike, **hub_kwargs) -> type[nn.Module]:
    """Read ``_class_name`` from a checkpoint's config.json (local folder or Hub repo) and return that class."""
    path = str(pretrained_model_name_or_path)
    if not os.path.isdir(path):
        try:
            validate_repo_id(path)
        except HFValidationError:
            raise FileNotFoundError(
                f"{path!r} is neither a checkpoint folder on this machine nor a Hub repo id ('owner/name'). "
                f"Check the path, or pass the id of a ghibligan model on the Hub."
            ) from None
    if os.path.isdir(path):
        config_file = Path(path) / constants.CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{path!r} has no config.json: it is not a checkpoint written by `save_pretrained`."
            )
    else:
        config_file = hf_hub_download(repo_id=path, filename=constants.CONFIG_NAME, **hub_kwargs)
    if os.path.getsize(config_file) > MAX_CONFIG_BYTES:
        raise ValueError(f"config.json of {path!r} is over {MAX_CONFIG_BYTES:,} bytes: not a ghibligan config.")
    config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    class_name = config.get("_class_name", "UNetGenerator")
    if class_name not in GENERATOR_CLASSES:
        raise ValueError(
            f"{path!r} holds a {class_name!r}, which is not a ghibligan generator "
            f"(expected one of {sorted(GENERATOR_CLASSES)})."
        )
    return GENERATOR_CLASSES[class_name]


def load_generator(pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> nn.Module:
    """`from_pretrained` on whichever generator class the checkpoint holds (U-Net or ResNet), in eval mode.

    ``kwargs`` go to `from_pretrained` (``revision``, ``cache_dir``, ``token``, ``local_files_only``,
    ``max_parameters`` — checkpoints with more parameters are refused before allocation, see `ghibligan.models.limits`).
    """
    hub_keys = ("revision", "cache_dir", "token", "local_files_only", "force_download")
    cls = generator_class_for(pretrained_model_name_or_path, **{k: v for k, v in kwargs.items() if k in hub_keys})
    return cls.from_pretrained(pretrained_model_name_or_path, **kwargs)
