"""Teachers: turn photos into target images, to make paired data for Pix2Pix-style distillation.

Every teacher has ``name`` (the ``--teacher`` value that rebuilds it), ``describe()`` (its parameters) and
``generate(images, keys) -> (outputs, seeds)``.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .ghibli import GhibliConfig, ghiblify
from .toon import PRESETS, ToonConfig, ToonTeacher, render, toonify

__all__ = ["PRESETS", "GhibliConfig", "ToonConfig", "ToonTeacher", "ghiblify", "make_teacher", "render", "toonify"]


def make_teacher(spec: str, **kwargs):
    """Build a teacher from its ``--teacher`` value: ``toon``, ``toon:PRESET`` (``toon``, ``painterly``, ``ghibli``) or
    ``diffusers:ID_OR_DIR``.

    ``kwargs`` go to the teacher (`ToonTeacher` overrides, or `DiffusionTeacher` options such as ``prompt``).
    """
    kind, _, argument = spec.partition(":")
    if kind == "toon":
        return ToonTeacher(argument or "toon", **kwargs)
    if kind == "diffusers":
        if not argument:
            raise ValueError("`--teacher diffusers:ID_OR_DIR` needs a model: a Hub repo id or a local folder.")
        _check_model_location(spec, argument)
        from .diffusion import DiffusionTeacher

        try:
            return DiffusionTeacher(argument, **kwargs)
        except OSError as error:  # diffusers' "not found / not a valid model" for both folders and Hub ids
            raise ValueError(
                f"`--teacher {spec}`: cannot load a diffusers img2img model from {argument!r} ({error})"
            ) from error
    raise ValueError(f"Unknown teacher {spec!r}: use toon, toon:{'|'.join(sorted(PRESETS))} or diffusers:ID_OR_DIR.")


def _check_model_location(spec: str, model: str) -> None:
    """A diffusers model is an existing folder or a Hub repo id; say which one is wrong before loading anything."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"`--teacher {spec}`: {model!r} is a file; give the diffusers checkpoint folder instead.")
        return
    try:
        validate_repo_id(model)
    except HFValidationError as error:
        raise FileNotFoundError(
            f"`--teacher {spec}`: {model!r} is neither an existing folder nor a Hub repo id (owner/name)."
        ) from error
