"""Hugging Face Hub integration shared by every ghibligan model.

`GhibliganHubMixin` is `huggingface_hub.PyTorchModelHubMixin` with the library's metadata (library name, pipeline tag,
licence, model card template) and two changes to its defaults:

* loading is **strict**: a checkpoint whose keys or shapes don't match the model raises an error naming them, a
  corrupted ``model.safetensors`` raises an error naming the file, and a checkpoint of another class is refused;
* loading is **bounded**: the config's sizes, the parameter count (``max_parameters=``, default 200 M) and the weights
  file's header are checked before the model is allocated (`ghibligan.models.limits`);
* ``config.json`` also records ``_class_name`` (as diffusers does), so `ghibligan.load_generator` can build the right
  class from any checkpoint.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin, constants, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file

from .limits import (
    DEFAULT_MAX_PARAMETERS,
    build_on_meta,
    check_config_bounds,
    check_parameter_count,
    check_weights_match,
)

REPO_URL = "https://github.com/ghibligan/ghibligan"

MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_class }}{% if repo_id %} — {{ repo_id }}{% endif %}

A [ghibligan]({{ repo_url }}) `{{ model_class }}`: {{ description | default("an image-to-image GAN model.", true) }}

## Use it

```python
from ghibligan import {{ model_class }}

model = {{ model_class }}.from_pretrained("{{ repo_id | default("path/to/this/folder", true) }}")
```
{% if is_generator %}
or, end to end on PIL images (pre/post-processing, any size, tiling):

```python
from PIL import Image
from ghibligan import Cartoonizer

cartoonizer = Cartoonizer.from_pretrained("{{ repo_id | default("path/to/this/folder", true) }}")
cartoon = cartoonizer(Image.open("photo.jpg"))[0]
```
{% endif %}
## Configuration

```json
{{ config_json }}
```
{% if training_details %}
## Training

{{ training_details }}
{% endif %}
Weights are stored as safetensors; `config.json` holds the keyword arguments of `{{ model_class }}.__init__`.
"""


class GhibliganHubMixin(
    PyTorchModelHubMixin,
    library_name="ghibligan",
    pipeline_tag="image-to-image",
    license="apache-2.0",
    tags=["ghibligan", "image-to-image", "gan"],
    repo_url=REPO_URL,
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """Mixin for ghibligan models: `save_pretrained`, `from_pretrained` (strict), `push_to_hub`, `config`."""

    # options a later version removed, which an older config.json may hold → the value that meant "off" (it loads)
    removed_config_keys: ClassVar[dict[str, Any]] = {}

    @property
    def config(self) -> dict[str, Any]:
        """The model's ``__init__`` kwargs, defaults included, as written to ``config.json`` (a copy)."""
        return copy.deepcopy(dict(self._hub_mixin_config or {}))

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """Names of the ``__init__`` kwargs a ``config.json`` of this class may hold."""
        return tuple(name for name in inspect.signature(cls.__init__).parameters if name != "self")

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        config = {"_class_name": type(self).__name__, **self.config}
        (save_directory / constants.CONFIG_NAME).write_text(json.dumps(config, sort_keys=True, indent=2))

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        kwargs.setdefault("model_class", type(self).__name__)
        kwargs.setdefault("config_json", json.dumps(self.config, sort_keys=True, indent=2))
        kwargs.setdefault("is_generator", type(self).__name__.endswith("Generator"))
        return super().generate_model_card(*args, **kwargs)

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs) -> str:
        """Upload to the Hub; the model card's snippet names ``repo_id``. See `PyTorchModelHubMixin.push_to_hub`."""
        model_card_kwargs = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=model_card_kwargs, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        config: dict | None = None,
        **model_kwargs,
    ):
        if config is None:
            raise FileNotFoundError(
                f"No config.json found for {model_id!r}: a ghibligan checkpoint is a folder (or Hub repo) written by "
                f"`save_pretrained`, holding config.json and model.safetensors."
            )
        # Bounds before memory: the config's sizes, then the parameter count on the meta device, then the weights
        # file's header must match; only then is the model allocated. See `ghibligan.models.limits`.
        max_parameters = model_kwargs.pop("max_parameters", DEFAULT_MAX_PARAMETERS)
        check_config(cls, config, source=model_id)
        check_config_bounds(model_kwargs, source=model_id)
        meta_model = build_on_meta(cls, model_kwargs)
        check_parameter_count(meta_model, max_parameters, source=model_id)
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, constants.SAFETENSORS_SINGLE_FILE)
        else:
            model_file = hf_hub_download(
                repo_id=model_id,
                filename=constants.SAFETENSORS_SINGLE_FILE,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        check_weights_match(meta_model, model_file, strict=strict)
        model = cls(**model_kwargs)
        load_weights(model, model_file, map_location=map_location, strict=strict)
        return model.eval()


def check_config(cls: type, config: dict, source: str) -> None:
    """Refuse a config written for another class, or holding keys this class does not take.

    A key in the class's ``removed_config_keys`` (an option a later version dropped) is accepted silently when it holds
    the value that meant "off", and refused with what to do otherwise.
    """
    class_name = config.get("_class_name")
    if class_name is not None and class_name != cls.__name__:
        raise ValueError(
            f"{source!r} holds a {class_name} checkpoint, not a {cls.__name__}. Load it with "
            f"`ghibligan.{class_name}.from_pretrained(...)` or `ghibligan.load_generator(...)`."
        )
    for key, harmless in cls.removed_config_keys.items():
        if key in config and config[key] != harmless:
            raise ValueError(
                f"config.json of {source!r} sets {key}={config[key]!r}, an option {cls.__name__} no longer has (it "
                f"was removed after ghibligan 0.1). Retrain the model without it, or load this checkpoint with "
                f"ghibligan 0.1 (`pip install 'ghibligan<0.2'`)."
            )
    accepted = set(cls.config_keys())
    unknown = sorted(
        key for key in config if not key.startswith("_") and key not in accepted | set(cls.removed_config_keys)
    )
    if unknown:
        raise ValueError(
            f"config.json of {source!r} has keys {unknown} that {cls.__name__} does not take "
            f"(it takes {sorted(accepted)}). Was it written by another model class or a newer ghibligan?"
        )


def first_non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinite values, or None."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor.detach()).all():
            return name
    return None


def load_weights(
    model: torch.nn.Module, model_file: str | os.PathLike, map_location: str = "cpu", strict: bool = True
) -> None:
    """Load ``model.safetensors`` into ``model``, with errors that name the file and what does not match.

    Tensors are cast to the model's dtype, so a checkpoint stored in fp16 loads into an fp32 model; a tensor holding
    NaN or infinite values is refused (`ValueError`) before any output is drawn from it.
    """
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"Weights file {str(model_file)!r} does not exist.")
    try:
        state_dict = load_file(model_file, device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"Could not read weights from {str(model_file)!r}: {error}. The file is corrupted or not a safetensors "
            f"file; download or save the checkpoint again."
        ) from error
    name = first_non_finite(state_dict.items())
    if name is not None:
        raise ValueError(
            f"Weights in {str(model_file)!r} hold NaN or infinite values in {name!r}: the checkpoint is damaged "
            f"(or was saved from a diverged run). Load another checkpoint."
        )
    try:
        model.load_state_dict(state_dict, strict=strict)
    except RuntimeError as error:
        raise ValueError(
            f"Weights in {str(model_file)!r} do not match {type(model).__name__} built from its config.json:\n{error}"
        ) from error
